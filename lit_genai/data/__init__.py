"""LightningDataModules: each yields batches in the shapes of DESIGN.md contract 2."""

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

__all__ = [
    "CIFAR10",
    "MNIST",
    "Digits",
    "FashionMNIST",
    "ImageDataModule",
    "ImageFolder",
    "MNIST5k",
    "TorchvisionDataModule",
]
