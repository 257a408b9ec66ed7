"""Plain networks: tensors in, tensors out; no losses, logging or schedules."""

from lit_genai.nn.unet import UNet

__all__ = ["UNet"]
