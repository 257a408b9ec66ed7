"""Image pixels as tokens: the training data of a pixel-level autoregressive model (PixelCNN).

``ImagePixels`` wraps an image data module and turns each image into a sequence of discrete pixel
values, so that a token model (``lit_genai.ar.module.NextToken`` over
``lit_genai.nn.pixelcnn.GatedPixelCNN``) learns the exact discrete likelihood of the images, in nats
per image and bits per dimension, as PixelCNN papers report it.

Tokens (docs/architecture.md, "Batches"): ``(tokens, labels)``, tokens (B, N) int64 with N = C H W in
raster order and the channels innermost, position p = (h W + w) C + c; labels (B,) int64 (the
images' classes, 0 for unlabelled data). A pixel value u = (x + 1) / 2 in [0, 1] becomes

- ``levels=256``: its 8-bit value, exactly ``lit_genai.data.images.to_uint8``;
- ``levels=L`` (2 < L < 256): floor(u L), clamped to L - 1;
- ``levels=2``: 0 / 1 after a binarisation (``lit_genai.data.binarize``): ``dynamic`` (a fresh draw
  every time a training image is drawn; validation and test use the ``static`` draw, so that their
  likelihoods are deterministic, as the VAE does), ``static`` or ``threshold``.

``decode(tokens)`` gives uint8 images (B, C, H, W): t * 255 / (L - 1), rounded (0 / 255 for binary
tokens), so samples take the image media route. ``predict_dataloader`` yields (B,) int64 sample
indices as the image modules do.

What the model must know is set in ``__init__`` (the command line links it): ``vocab_size`` (L),
``block_size`` (N) and ``num_classes`` (the images'); ``image_shape`` (C, H, W) and
``feature_extractor`` (the images') are there too.

Shape legend: B batch, C/H/W image, N = C H W tokens, L levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Optional

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lit_genai.data.binarize import MODES, binarize
from lit_genai.data.checks import Folder, check_counts, nested
from lit_genai.data.decoders import PixelDecoder, decoder_state
from lit_genai.data.images import ImageDataModule
from lit_genai.data.loaders import SplitLoaders
from lit_genai.errors import ConfigError
from lit_genai.media import to_uint8
from lit_genai.paradigm import this_rank

_KEY = "data.init_args"


def image_to_tokens(
    x: Tensor,
    levels: int,
    binarization: Optional[str] = None,
    *,
    uniform: Optional[Tensor] = None,
) -> Tensor:
    """Images (B, C, H, W) in [-1, 1] -> tokens (B, N) int64 in [0, levels), channels innermost.

    Args:
        x: (B, C, H, W) images in [-1, 1].
        levels: L (module docstring): 256 gives ``to_uint8``'s values, 2 needs ``binarization``.
        binarization: ``"dynamic"``, ``"static"`` or ``"threshold"`` for ``levels=2``.
        uniform: ``"dynamic"`` only: the U(0, 1) noise of the draw, x's shape (None: global RNG).
    """
    if levels == 2:
        tokens = (binarize(x, binarization, uniform=uniform) > 0).long()  # (B, C, H, W) of 0 / 1
    elif levels == 256:
        tokens = to_uint8(x).long()
    else:
        u = (x.clamp(-1, 1) + 1) / 2  # (B, C, H, W) in [0, 1]
        tokens = (u * levels).floor().long().clamp(0, levels - 1)
    return tokens.permute(0, 2, 3, 1).flatten(1)  # (B, H, W, C) -> (B, N)


def tokens_to_uint8(tokens: Tensor, image_shape: Sequence[int], levels: int) -> Tensor:
    """Tokens (B, N) -> uint8 images (B, C, H, W): round(t 255 / (L - 1)), on the tokens' device."""
    return PixelDecoder(tuple(image_shape), levels)(tokens)  # (B, C, H, W)


class PixelTokens(Dataset):
    """(tokens (N,) int64, label () int64) pairs of an image data set's images (module docstring).

    Args:
        images: A data set of (x (C, H, W) in [-1, 1], label) pairs.
        levels: L, the number of token values.
        binarization: The binarisation of ``levels=2``; ``"dynamic"`` draws afresh at every access.
        rank: This process's rank, world: the number of processes; a dynamic draw is this rank's
            slice of a world-sized draw, so ranks seeded alike draw different noise.
    """

    def __init__(
        self,
        images: Dataset,
        levels: int,
        binarization: Optional[str] = None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.images, self.levels, self.binarization = images, levels, binarization
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.images[index]
        x = torch.as_tensor(x)[None]  # (1, C, H, W)
        uniform = None
        if self.levels == 2 and self.binarization == "dynamic":
            uniform = torch.rand((self.world, *x.shape[1:]))[self.rank][None]  # (1, C, H, W)
        tokens = image_to_tokens(x, self.levels, self.binarization, uniform=uniform)[0]  # (N,)
        return tokens, torch.as_tensor(y, dtype=torch.long)


class ImagePixels(SplitLoaders, L.LightningDataModule):
    """The pixels of an image data module as token sequences (module docstring).

    Args:
        images: The image data module whose train / val / test images are tokenised (its splits,
            seed and random flip; flips are applied to the token batches, on the device).
        levels: Token values L per channel: 256 (8-bit), 2 (binarised), or another number of equal
            bins of [0, 1].
        binarization: For ``levels=2``: ``dynamic`` (a fresh draw each time a training image is drawn;
            validation and test use the ``static`` draw), ``static`` (one fixed draw per image) or
            ``threshold``; None otherwise.
        batch_size: Token sequences per batch (also sample indices per predict batch).
        num_workers: DataLoader worker processes for the token batches.
        predict_samples: Number of samples ``trainer.predict`` asks the model for.
    """

    def __init__(
        self,
        images: ImageDataModule,
        levels: int = 256,
        binarization: Optional[Literal["dynamic", "static", "threshold"]] = None,
        batch_size: int = 64,
        num_workers: int = 0,
        predict_samples: int = 64,
    ) -> None:
        super().__init__()
        check_counts(
            type(self).__name__,
            batch_size=batch_size,
            num_workers=num_workers,
            predict_samples=predict_samples,
        )
        if not 2 <= levels <= 256:
            raise ConfigError(
                f"{_KEY}.levels={levels} must be between 2 and 256 (the values of 8-bit pixels)"
            )
        if levels == 2 and binarization not in MODES:
            raise ConfigError(
                f"{_KEY}.levels=2 needs a binarisation of the grey images, got binarization={binarization}: "
                f"set {_KEY}.binarization to one of {list(MODES)}"
            )
        if levels != 2 and binarization is not None:
            raise ConfigError(
                f"{_KEY}.binarization={binarization} applies to levels=2 only, but levels={levels}: "
                f"remove {_KEY}.binarization or set {_KEY}.levels: 2"
            )
        self.images, self.levels, self.binarization = images, levels, binarization
        self.batch_size, self.num_workers, self.predict_samples = batch_size, num_workers, predict_samples
        self.image_shape: tuple[int, int, int] = tuple(int(s) for s in images.sample_shape)  # (C, H, W)
        C, H, W = self.image_shape
        self.vocab_size: int = levels
        self.block_size: int = C * H * W
        self.num_classes: int = int(images.num_classes)
        self.feature_extractor: Optional[str] = getattr(images, "feature_extractor", None)
        self.train_set: Optional[PixelTokens] = None
        self.val_set: Optional[PixelTokens] = None
        self.test_set: Optional[PixelTokens] = None

    # ------------------------------------------------------------------ identity and sets
    def identity(self) -> dict[str, Any]:
        """What decides the token sets: this class, ``levels``, ``binarization`` and the images'
        ``identity()``."""
        cls = type(self)
        return {
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "levels": self.levels,
            "binarization": self.binarization,
            "images": self.images.identity(),
        }

    @property
    def eval_binarization(self) -> Optional[str]:
        """The binarisation of validation and test tokens: ``static`` in place of ``dynamic``."""
        return "static" if self.binarization == "dynamic" else self.binarization

    def write_folders(self) -> list[Folder]:
        """The wrapped images' (a download), which the command line checks before anything runs
        (``lit_genai.cli_checks.check_writable``)."""
        images = getattr(self.images, "write_folders", None)
        return nested(images(), "images") if callable(images) else []

    def prepare_data(self) -> None:
        self.images.prepare_data()

    def setup(self, stage: Optional[str] = None) -> None:
        """The images' ``setup(stage)``, then the token view of each of their sets."""
        self.images.setup(stage)
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        for split in ("train", "val", "test"):
            images = getattr(self.images, f"{split}_set", None)
            if images is None:
                continue
            mode = self.binarization if split == "train" else self.eval_binarization
            setattr(self, f"{split}_set", PixelTokens(images, self.levels, mode, rank, world))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The images' random horizontal flip, on training token batches (docs/architecture.md)."""
        if getattr(self.images, "random_flip", False) and self.trainer is not None and self.trainer.training:
            tokens, y = batch  # (B, N), (B,)
            C, H, W = self.image_shape
            u = this_rank(lambda n: torch.rand(n, device=tokens.device), tokens.shape[0], self.trainer)
            grid = tokens.view(-1, H, W, C)  # (B, H, W, C)
            flipped = torch.where((u < 0.5)[:, None, None, None], grid.flip(2), grid)
            batch = (flipped.reshape(tokens.shape), y)
        return batch

    # ------------------------------------------------------------------ media
    def decode(self, tokens: Tensor) -> Tensor:
        """The image medium: tokens (B, N) -> uint8 images (B, C, H, W) on the tokens' device."""
        return self.decoder(tokens)

    @property
    def decoder(self) -> PixelDecoder:
        """What ``decode`` does, kept in checkpoints (``lit_genai.data.decoders``)."""
        return PixelDecoder(tuple(self.image_shape), self.levels)

    def state_dict(self) -> dict[str, Any]:
        """The media decoder, so a checkpoint decodes its samples without the images."""
        return decoder_state(self.decoder)
