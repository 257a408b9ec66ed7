"""Lightning callbacks: EMA, media logging, prediction writing."""

from lit_genai.callbacks.ema import EMA
from lit_genai.callbacks.samples import SampleLogger, SampleWriter

__all__ = ["EMA", "SampleLogger", "SampleWriter"]
