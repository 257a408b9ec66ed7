"""LightningDataModules: each yields batches in the shapes of docs/architecture.md, "Batches"."""

from lit_genai.data.audio import AudioFolder, ProceduralNotes
from lit_genai.data.captions import CaptionedImages, COCOCaptions
from lit_genai.data.images import (
    CIFAR10,
    MNIST,
    Digits,
    FashionMNIST,
    ImageDataModule,
    ImageFolder,
    MNIST5k,
    TorchvisionDataModule,
)
from lit_genai.data.pixels import ImagePixels
from lit_genai.data.prompt_response import PromptResponse
from lit_genai.data.shapes import CaptionedShapes
from lit_genai.data.text import CharText
from lit_genai.data.tokens import ImageTokens
from lit_genai.data.translation import ColouredDigits, DigitsToMNIST, EdgesToDigits
from lit_genai.data.translation_folders import Facades, Horse2Zebra, Maps, PairedFolder, UnpairedFolders

__all__ = [
    "AudioFolder",
    "CaptionedImages",
    "COCOCaptions",
    "ColouredDigits",
    "DigitsToMNIST",
    "EdgesToDigits",
    "Facades",
    "Horse2Zebra",
    "Maps",
    "PairedFolder",
    "UnpairedFolders",
    "CaptionedShapes",
    "CIFAR10",
    "CharText",
    "MNIST",
    "Digits",
    "FashionMNIST",
    "ImageDataModule",
    "ImageFolder",
    "ImagePixels",
    "ProceduralNotes",
    "PromptResponse",
    "ImageTokens",
    "MNIST5k",
    "TorchvisionDataModule",
]
