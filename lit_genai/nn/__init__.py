"""Plain networks: tensors in, tensors out; no losses, logging or schedules."""

from lit_genai.nn.autoencoder import Decoder, Encoder
from lit_genai.nn.dcgan import DCGANDiscriminator, DCGANGenerator
from lit_genai.nn.dit import DiT
from lit_genai.nn.pixelcnn import GatedPixelCNN
from lit_genai.nn.sngan import ResNetDiscriminator, ResNetGenerator
from lit_genai.nn.text_encoder import TextEncoder
from lit_genai.nn.transformer import GPT
from lit_genai.nn.unet import UNet
from lit_genai.nn.vae import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from lit_genai.nn.vq import VectorQuantizer
from lit_genai.nn.wavenet import WaveNet, WaveNetCache

__all__ = [
    "TextEncoder",
    "ConvDecoder",
    "ConvEncoder",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "DiT",
    "Decoder",
    "Encoder",
    "GPT",
    "GatedPixelCNN",
    "MLPDecoder",
    "MLPEncoder",
    "ResNetDiscriminator",
    "ResNetGenerator",
    "UNet",
    "VectorQuantizer",
    "WaveNet",
    "WaveNetCache",
]
