"""On-disk cache of real-image features, the reference statistics of FID / KID / precision / recall.

Extracting the features of 10,000-50,000 real images takes longer than many evaluations, and the
same reference serves every run on the same data, so ``real_features`` keeps them in a file and
reuses it. A cached file is only reused for the same images seen by the same network:

- the file name holds the data set and split names, the extractor's name, the number of images and
  a hash of ``key``, the data's identity: the configuration that decides which images the split
  holds (``lit_genai.data.images.ImageDataModule.identity()``: its seed, split sizes, image size,
  channels, root folder and, for an image folder, a listing of its files);
- the file also stores a fingerprint of the extractor's class and weights and the key itself; a
  file that differs in either is recomputed, never silently reused.

Shape legend: B batch, C channels, H/W spatial, N real images, D feature width.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import RandomSampler
from tqdm.auto import tqdm

from lit_genai.atomic import atomic_file
from lit_genai.media import to_uint8

__all__ = ["default_cache_dir", "fingerprint", "key_digest", "real_features"]


def default_cache_dir() -> Path:
    """``$LIT_GENAI_CACHE`` or ``~/.cache/lit_genai``: where ``real_features`` keeps its files."""
    return Path(os.environ.get("LIT_GENAI_CACHE") or Path.home() / ".cache" / "lit_genai")


def fingerprint(extractor: nn.Module) -> str:
    """Hash of the extractor's class and weights: a cache made with other weights under the same name
    is recomputed instead of silently reused."""
    digest = hashlib.sha256(type(extractor).__qualname__.encode())
    for key, value in extractor.state_dict().items():
        digest.update(f"{key}{tuple(value.shape)}{value.dtype}".encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _canonical(key: Mapping[str, Any]) -> str:
    """The key as canonical JSON (sorted keys); values JSON cannot hold are written as their repr."""
    return json.dumps(dict(key), sort_keys=True, default=repr)


def key_digest(key: Mapping[str, Any]) -> str:
    """12 hex digits of the SHA-256 of the canonical JSON of ``key``: the data's part of a file name."""
    return _digest(_canonical(key))


def _digest(canonical: str) -> str:
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _available(data: Union[Tensor, Iterable]) -> Optional[int]:
    """How many images ``data`` holds, or None when it cannot say without iterating."""
    if isinstance(data, Tensor):
        return data.shape[0]
    dataset = getattr(data, "dataset", None)  # a DataLoader over a map-style data set
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None


def _image_batches(data: Union[Tensor, Iterable], batch_size: int) -> Iterable[Tensor]:
    """Batches of images (B, C, H, W) from a tensor or from a loader of ``(x, y)`` / ``x`` batches."""
    if isinstance(data, Tensor):
        yield from data.split(batch_size)
        return
    for batch in data:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def _file_name(dataset: str, split: str, extractor: str, n: int, key: Optional[str]) -> str:
    suffix = f"-{_digest(key)}" if key is not None else ""  # key: canonical JSON
    return f"{dataset}-{split}-{extractor}-{n}{suffix}.pt"


def _load_cache(path: Path, fingerprint_: str, key: Optional[str], num: int, width: int) -> Optional[Tensor]:
    if not path.is_file():
        return None
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True)
        features = cache["features"]
        same_weights = cache["fingerprint"] == fingerprint_
        same_data = cache.get("key") == key and tuple(features.shape) == (num, width)
    except Exception as err:  # truncated or foreign file: the cache is disposable, recompute it
        rank_zero_warn(f"real-feature cache {path} is unreadable ({type(err).__name__}); recomputing it")
        return None
    if not same_weights:
        rank_zero_warn(f"real-feature cache {path} was made with other extractor weights; recomputing it")
        return None
    if not same_data:  # a hash collision or a hand-copied file: the name says one thing, the file another
        rank_zero_warn(f"real-feature cache {path} was made from other data; recomputing it")
        return None
    return features


@torch.no_grad()
def real_features(
    data: Union[Tensor, Iterable],
    extractor: nn.Module,
    *,
    dataset: str,
    split: str,
    num: int,
    key: Optional[Mapping[str, Any]] = None,
    cache: bool = True,
    cache_dir: Optional[Union[str, Path]] = None,
    progress: bool = True,
    batch_size: int = 250,
) -> Tensor:
    """Features (N, D) of the first ``num`` real images, cached on disk and reused.

    The file is ``<cache_dir>/<dataset>-<split>-<extractor.name>-<N>-<hash of key>.pt`` (without the
    hash when ``key`` is None) and also stores the key and a hash of the extractor's weights; a later
    call with the same arguments, key and weights loads it without running the extractor. Images
    in [-1, 1] are quantised with ``to_uint8`` first, exactly as generated images are. When the data
    holds fewer than ``num`` images, all are used, a warning says so, and N (hence
    ``Protocol.num_real``) is the smaller number.

    Under DDP call it on every rank with the full (unsharded) data: each rank computes or loads the
    same features, which ``QualityMetrics.set_real_features`` then shards.

    Args:
        data: A DataLoader of ``(x, y)`` batches (or plain ``x``) with x in [-1, 1] (B, C, H, W), as the
            data modules yield, or a tensor (N, C, H, W) in [-1, 1] or uint8. Use an unshuffled
            loader: "the first num images" should be the same images in every run.
        extractor: The ``FeatureExtractor``; its ``name`` goes into the file name.
        dataset: Data set name for the file name, e.g. ``"MNIST5k"``.
        split: Split name for the file name, e.g. ``"train"``.
        num: Number of images wanted (state it with every FID: the value moves with it).
        key: The data's identity, a JSON-able dict of what decides the images (a data module's
            ``identity()``). Without it, two data sets of the same name, split and size share one
            file: give it whenever the data is not fixed by ``dataset`` alone.
        cache: Read and write the cache file; False computes the features every time.
        cache_dir: Folder of the cache files (default ``$LIT_GENAI_CACHE`` or ``~/.cache/lit_genai``).
        progress: Show a tqdm progress bar while extracting.
        batch_size: Images per extractor call when ``data`` is a tensor.
    """
    available = _available(data)
    if available is not None and available < num:
        rank_zero_warn(
            f"{dataset}/{split} has {available} images, fewer than num={num}: using all {available}"
        )
    n = num if available is None else min(num, available)
    if isinstance(getattr(data, "sampler", None), RandomSampler):
        rank_zero_warn("real_features got a shuffling DataLoader: the first images differ from run to run")
    width = int(extractor.num_features)
    key_json = _canonical(key) if key is not None else None
    folder = Path(cache_dir if cache_dir is not None else default_cache_dir())
    path = folder / _file_name(dataset, split, extractor.name, n, key_json)
    weights = fingerprint(extractor)
    if cache:
        cached = _load_cache(path, weights, key_json, n, width)
        if cached is not None:
            return cached

    extractor.eval()
    device = next(extractor.parameters(), torch.empty(0)).device
    chunks, count = [], 0
    with tqdm(total=n, desc=f"real features {dataset}/{split}", unit="img", disable=not progress) as bar:
        for x in _image_batches(data, batch_size):
            x = x[: n - count]  # (b, C, H, W)
            images = x if x.dtype == torch.uint8 else to_uint8(x)  # quantised as generated images are
            with torch.autocast(device.type, enabled=False):
                chunks.append(extractor(images.to(device)).float().cpu())  # (b, D)
            count += x.shape[0]
            bar.update(x.shape[0])
            if count >= n:
                break
    if count < n:  # a loader whose size was unknown ran out early
        rank_zero_warn(f"{dataset}/{split} ran out after {count} images, fewer than num={num}: using all")
        path = folder / _file_name(dataset, split, extractor.name, count, key_json)
    features = torch.cat(chunks) if chunks else torch.zeros(0, width)  # (N, D)
    if not cache:
        return features

    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"features": features, "fingerprint": weights, "extractor": extractor.name, "key": key_json}
    with atomic_file(path) as file:  # ranks and nodes may write at once; never a half file
        torch.save(payload, file)
    return features
