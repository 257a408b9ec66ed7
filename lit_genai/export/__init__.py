"""Exporting trained models to other runtimes and libraries (ONNX, safetensors, diffusers, Hugging Face)."""
