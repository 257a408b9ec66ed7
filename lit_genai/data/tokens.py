"""Image tokens: the training data of a second-stage token model over a frozen VQ-VAE.

``ImageTokens`` wraps an image data module and a tokenizer checkpoint (``lit_genai.vae.vqvae.VQVAE``
trained with ``lit-genai fit``). It encodes the train / val / test images once, in eval mode and
without gradients, and caches the token ids on disk, keyed on a digest of the checkpoint file and
on the images' ``identity()``: another tokenizer or other images are another cache file.

Batches (docs/architecture.md, "Batches"): ``(tokens, labels)``, tokens (B, h*w) int64 in raster
order (row by row of the h x w grid), labels (B,) int64 (the images' classes, 0 for unlabelled
data). Over captioned images (``data.shapes.CaptionedShapes``, items ``(image, attrs, caption)``)
batches are ``(tokens, attrs, captions)``: attrs (B, A) int64 the images' ground-truth attributes,
captions B strings, the ``text`` condition; the cache keeps both. ``predict_dataloader`` yields
(B,) int64 sample indices as the image modules do, and ``decode(tokens)`` turns sampled ids into
uint8 images (B, C, H, W) through the tokenizer's decoder, so samples take the image media route
(``lit_genai.media``).

What the model must know is set in ``__init__`` (the command line links it): ``vocab_size`` (the
codebook size K), ``block_size`` (h*w tokens per image) and ``num_classes`` (from the images);
``token_shape`` (h, w) and ``feature_extractor`` (the images') are there too, and the wrapped data's
``conditions``, ``text_vocabulary``, ``attribute_names`` and ``attribute_values`` where it has them
(so the command line links the caption words and the evaluation finds the attributes).

Shape legend: B batch, C/H/W image, h/w token grid, N images of a split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lit_genai.atomic import atomic_file
from lit_genai.data.checks import Folder, check_counts, nested
from lit_genai.data.decoders import decoder_state
from lit_genai.data.images import ImageDataModule
from lit_genai.data.loaders import SplitLoaders
from lit_genai.errors import ConfigError
from lit_genai.media import to_uint8
from lit_genai.paradigm import eval_mode
from lit_genai.pretrained import load_pretrained
from lit_genai.vae.vqvae import VQVAE

SPLITS = ("train", "val", "test")
_KEY = "data.init_args.tokenizer"
PASSED_ON = ("conditions", "text_vocabulary", "attribute_names", "attribute_values")
"""What the wrapped image data declares about its conditions, exposed as the token data's own."""


class CaptionedTokens(Dataset):
    """Items ``(tokens (h*w,) int64, attrs (A,) int64, caption str)`` of a captioned split's cache."""

    def __init__(self, tokens: Tensor, attrs: Tensor, captions: list[str]) -> None:
        self.tokens, self.attrs, self.captions = tokens, attrs, captions

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, str]:
        return self.tokens[i], self.attrs[i], self.captions[i]


def file_digest(path: str | Path, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


@dataclasses.dataclass(frozen=True)
class VQTokenDecoder:
    """VQ-VAE token ids (B, h·w) or (B, h, w) -> uint8 images (B, C, H, W), through the tokenizer's
    decoder (a media decoder of ``lit_genai.data.decoders``).

    Args:
        tokenizer: The VQ-VAE checkpoint (``lit-genai fit --config experiments/vae/vqvae_mnist.yaml``).
        token_shape: (h, w) of one image's tokens.
        model: The tokenizer, already loaded (not part of the config); read from ``tokenizer`` if None.
    """

    tokenizer: str
    token_shape: tuple[int, int]
    model: Optional[VQVAE] = dataclasses.field(
        default=None, repr=False, compare=False, metadata={"config": False}
    )
    modality = "image"

    def __post_init__(self) -> None:
        object.__setattr__(self, "token_shape", tuple(int(s) for s in self.token_shape))
        if self.model is None:
            object.__setattr__(self, "model", load_pretrained(self.tokenizer, VQVAE, _KEY))

    @torch.no_grad()
    def __call__(self, tokens: Tensor) -> Tensor:
        model = self.model.to(tokens.device)
        with eval_mode(model):
            images = model.decode(tokens.long().reshape(tokens.shape[0], *self.token_shape))
        return to_uint8(images)


class ImageTokens(SplitLoaders, L.LightningDataModule):
    """Token ids of a frozen VQ-VAE over an image data module, cached on disk.

    Args:
        images: The image data module whose train / val / test images are encoded (its splits,
            seed and ``batch_size``, which is also the batch size of the encoding pass). Random
            flips are not supported: the tokens are computed once, not per epoch.
        tokenizer: Path of a ``VQVAE`` checkpoint (e.g. ``runs/vae-vqvae_mnist/checkpoints/last.ckpt``),
            trained on images of the wrapped data's ``sample_shape``.
        batch_size: Token sequences per batch (also sample indices per predict batch).
        num_workers: DataLoader worker processes for the token batches.
        predict_samples: Number of samples ``trainer.predict`` asks the model for.
        cache_dir: Folder of the token cache; default: ``tokens/`` next to the checkpoint.
    """

    def __init__(
        self,
        images: ImageDataModule,
        tokenizer: str,
        batch_size: int = 64,
        num_workers: int = 0,
        predict_samples: int = 64,
        cache_dir: Optional[str] = None,
    ) -> None:
        super().__init__()
        check_counts(
            type(self).__name__,
            batch_size=batch_size,
            num_workers=num_workers,
            predict_samples=predict_samples,
        )
        if getattr(images, "random_flip", False):
            raise ConfigError(
                "data.init_args.images.init_args.random_flip=true but image tokens are encoded once, "
                "without augmentation: set it false"
            )
        self.images, self.tokenizer = images, tokenizer
        self.batch_size, self.num_workers, self.predict_samples = batch_size, num_workers, predict_samples
        self.cache_dir = cache_dir
        self.model: VQVAE = load_pretrained(tokenizer, VQVAE, _KEY)
        image_shape = tuple(int(s) for s in images.sample_shape)
        if self.model.sample_shape != image_shape:
            raise ConfigError(
                f"{_KEY}={tokenizer} was trained on images of shape {list(self.model.sample_shape)} but "
                f"data.init_args.images ({type(images).__name__}) gives {list(image_shape)}: wrap the data "
                "it was trained on, or train a tokenizer on these images"
            )
        self.image_shape = image_shape  # (C, H, W) of the decoded images
        self.token_shape: tuple[int, int] = self.model.token_shape  # (h, w)
        self.vocab_size: int = self.model.vocab_size
        self.block_size: int = self.token_shape[0] * self.token_shape[1]
        self.num_classes: int = int(images.num_classes)
        self.feature_extractor: Optional[str] = getattr(images, "feature_extractor", None)
        for name in PASSED_ON:  # only where the images have them: a missing one skips its CLI link
            if getattr(images, name, None) is not None:
                setattr(self, name, getattr(images, name))
        self.tokenizer_digest = file_digest(tokenizer)
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None
        self.encoded = False  # whether this instance encoded the images (False: read the cache)

    # ------------------------------------------------------------------ identity and cache
    def identity(self) -> dict[str, Any]:
        """What decides the token sets: this class, the tokenizer file's digest and the images'
        ``identity()``."""
        cls = type(self)
        return {
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "tokenizer": self.tokenizer_digest,
            "images": self.images.identity(),
        }

    @property
    def cache_path(self) -> Path:
        """``<cache_dir>/<images class>-<digest of identity()>.pt``."""
        folder = (
            Path(self.cache_dir) if self.cache_dir is not None else Path(self.tokenizer).parent / "tokens"
        )
        key = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]
        return folder / f"{type(self.images).__name__}-{key}.pt"

    def write_folders(self) -> list[Folder]:
        """The token cache's folder when the cache is still to be written, and the wrapped images'
        (a download), which the command line checks before anything runs
        (``lit_genai.cli_checks.check_writable``)."""
        images = getattr(self.images, "write_folders", None)
        folders = nested(images(), "images") if callable(images) else []
        if not self.cache_path.is_file():
            where = (
                "data.init_args.cache_dir" if self.cache_dir is not None else "tokens/ beside the tokenizer"
            )
            fix = "pass --data.cache_dir <a writable folder>"
            folders.append(Folder(f"the image token cache folder ({where})", self.cache_path.parent, fix))
        return folders

    def prepare_data(self) -> None:
        """Encode and cache the tokens once per node (Lightning calls this on one process)."""
        self.images.prepare_data()
        if not self.cache_path.is_file():
            self._write_cache(self._encode_all())

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        path = self.cache_path
        if path.is_file():
            cached = torch.load(path, map_location="cpu", weights_only=True)
        else:  # no prepare_data (setup called directly): encode here
            cached = self._encode_all()
            self._write_cache(cached)
        sets = {split: _dataset(*cached[split]) for split in SPLITS if split in cached}
        self.train_set, self.val_set, self.test_set = (sets.get(split) for split in SPLITS)

    # ------------------------------------------------------------------ media
    def decode(self, tokens: Tensor) -> Tensor:
        """The image medium: token ids (B, h*w) or (B, h, w) -> uint8 images (B, C, H, W) on the
        tokens' device, through the tokenizer's decoder."""
        return self.decoder(tokens)

    @property
    def decoder(self) -> VQTokenDecoder:
        """What ``decode`` does, kept in checkpoints (``lit_genai.data.decoders``): the tokenizer's
        checkpoint path, read again when a checkpoint of a token model is loaded without the data."""
        return VQTokenDecoder(self.tokenizer, self.token_shape, model=self.model)

    def state_dict(self) -> dict[str, Any]:
        """The media decoder, so a checkpoint decodes its samples without the images."""
        return decoder_state(self.decoder)

    # ------------------------------------------------------------------ helpers

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    @torch.no_grad()
    def _encode_all(self) -> dict[str, tuple[Any, ...]]:
        """{split: (tokens (N, h*w) int64, labels (N,) int64)} of every split the images have; for
        captioned images {split: (tokens, attrs (N, A) int64, N captions)}."""
        images = self.images
        images.setup(None)  # every split (the image modules' setup is idempotent)
        device = self._device()
        model = self.model.to(device)
        out: dict[str, tuple[Any, ...]] = {}
        with eval_mode(model):
            for split in SPLITS:
                dataset = getattr(images, f"{split}_set", None)
                if dataset is None:
                    continue
                loader = DataLoader(
                    dataset,
                    batch_size=images.batch_size,
                    num_workers=images.num_workers,
                    collate_fn=getattr(images, "collate_fn", None),  # captions as a list of str
                )
                tokens, labels, captions = [], [], []
                for x, y, *text in loader:  # (x, labels) or captioned (x, attrs, captions)
                    ids = model.encode(x.to(device))  # (B, h, w)
                    tokens.append(ids.flatten(1).cpu())  # (B, h*w) raster order
                    labels.append(torch.as_tensor(y).long().cpu())  # (B,) or (B, A)
                    captions.extend(str(c) for c in (text[0] if text else ()))
                if not tokens:  # an empty split
                    tokens, labels = (
                        [torch.zeros(0, self.block_size, dtype=torch.long)],
                        [torch.zeros(0).long()],
                    )
                out[split] = (torch.cat(tokens), torch.cat(labels))
                if "text" in tuple(getattr(images, "conditions", None) or ()):
                    out[split] += (captions,)  # plain strings: torch.load(weights_only=True) reads them
        self.model.to("cpu")
        self.encoded = True
        return out

    def _write_cache(self, cached: dict[str, tuple[Any, ...]]) -> None:
        path = self.cache_path
        with atomic_file(path) as out:  # a reader sees the whole file or none
            torch.save(cached, out)
        sizes = ", ".join(f"{split} {len(items[0])}" for split, items in cached.items())
        rank_zero_info(f"ImageTokens: encoded {sizes} images into {path}")


def _dataset(tokens: Tensor, labels: Tensor, captions: Optional[list[str]] = None) -> Dataset:
    """A split's cached items as a dataset: (tokens, labels) pairs, or captioned triples."""
    return TensorDataset(tokens, labels) if captions is None else CaptionedTokens(tokens, labels, captions)
