"""Lightning callbacks: EMA, media logging, prediction writing, evaluation, checkpoints, the state a
resume needs, the guard against non-finite values."""

from lit_genai.callbacks.checkpoint import ModelCheckpoint
from lit_genai.callbacks.ema import EMA
from lit_genai.callbacks.evaluation import Evaluation
from lit_genai.callbacks.finite import FiniteGuard
from lit_genai.callbacks.resume import ResumeState
from lit_genai.callbacks.samples import SampleLogger, SampleWriter

__all__ = [
    "EMA",
    "Evaluation",
    "FiniteGuard",
    "ModelCheckpoint",
    "ResumeState",
    "SampleLogger",
    "SampleWriter",
]
