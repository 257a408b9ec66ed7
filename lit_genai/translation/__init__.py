"""Image-to-image translation: pix2pix (paired) and CycleGAN (unpaired); losses and the image pool
are pure, the modules share ``base.py``."""

from lit_genai.translation.base import TranslationSampling
from lit_genai.translation.cyclegan import CycleGAN
from lit_genai.translation.pix2pix import Pix2Pix

__all__ = ["CycleGAN", "Pix2Pix", "TranslationSampling"]
