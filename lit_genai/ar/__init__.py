"""Autoregressive (next-token) generation: the ``NextToken`` module (module.py), its sampling loops
(sampling.py: temperature / top-k / top-p, KV-cache stepping) and GPT-2 weights (pretrained.py)."""

from lit_genai.ar.module import NextToken, NextTokenSampling
from lit_genai.ar.sampling import filter_logits, generate, sample_next

__all__ = ["NextToken", "NextTokenSampling", "filter_logits", "generate", "sample_next"]
