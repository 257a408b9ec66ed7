"""Masked-token generation (MaskGIT, BERT-style): the ``MaskedTokens`` module (module.py), mask
schedules (schedules.py) and iterative parallel decoding (sampling.py)."""

from lit_genai.masked.module import MaskedSampling, MaskedTokens
from lit_genai.masked.sampling import maskgit_decode
from lit_genai.masked.schedules import SCHEDULES, Schedule, mask_schedule, num_to_mask

__all__ = [
    "SCHEDULES",
    "MaskedSampling",
    "MaskedTokens",
    "Schedule",
    "mask_schedule",
    "maskgit_decode",
    "num_to_mask",
]
