"""Lightning callbacks: EMA, media logging, prediction writing, evaluation, checkpoints, RNG state."""

from lit_genai.callbacks.checkpoint import ModelCheckpoint
from lit_genai.callbacks.ema import EMA
from lit_genai.callbacks.evaluation import Evaluation
from lit_genai.callbacks.rng import RNGState
from lit_genai.callbacks.samples import SampleLogger, SampleWriter

__all__ = ["EMA", "Evaluation", "ModelCheckpoint", "RNGState", "SampleLogger", "SampleWriter"]
