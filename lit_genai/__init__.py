"""lit_genai: generative models as PyTorch Lightning modules, configured by LightningCLI YAML."""

__version__ = "0.1.0"
