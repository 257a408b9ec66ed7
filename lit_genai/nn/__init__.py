"""Plain networks: tensors in, tensors out; no losses, logging or schedules."""

from lit_genai.nn.dcgan import DCGANDiscriminator, DCGANGenerator
from lit_genai.nn.sngan import ResNetDiscriminator, ResNetGenerator
from lit_genai.nn.unet import UNet

__all__ = ["DCGANDiscriminator", "DCGANGenerator", "ResNetDiscriminator", "ResNetGenerator", "UNet"]
