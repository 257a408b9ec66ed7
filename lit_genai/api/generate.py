"""``generate``, ``decode`` and ``save``: samples of a loaded module as their medium, and as files.

    module = lit_genai.load("runs/diffusion-mnist")
    images = lit_genai.generate(module, 16, seed=0, cond="7", steps=50)   # uint8 (16, 1, 28, 28)
    lit_genai.save(images, "sevens.png")                                   # one grid

Sample i of ``generate(module, n, seed=s, start=k)`` (i = k, ..., k + n - 1) is drawn from the
generator ``s + i`` and, for a class-conditional model given no condition, with label
``i % num_classes``: exactly what ``lit-genai predict`` does (``paradigm.predict_step``), so
``generate(module, 1, seed=s, start=3)`` redraws predict's ``sample_00003`` file and the service
returns the same bytes (docs/architecture.md, "Use").

The medium (``lit_genai.media``): uint8 tensors (n, C, H, W) for images, a list of n strings for text,
``Waveforms`` for audio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor

from lit_genai import media, paradigm
from lit_genai.errors import ConfigError

Media = media.Media
Label = Union[int, str]


def generate(
    module: Any,
    n: int,
    *,
    seed: int = 0,
    cond: Any = None,
    start: int = 0,
    batch_size: Optional[int] = None,
    **options: Any,
) -> Media:
    """``n`` samples of ``module`` as their medium (module docstring).

    Args:
        module: A generative module (``lit_genai.load`` gives one with its media decoder).
        n: Number of samples.
        seed: Sample i draws from ``torch.Generator().manual_seed(seed + i)``.
        cond: Class labels (an index or a class name, one for all or one per sample), a tensor, or a
            mapping of named conditions (docs/architecture.md, "Conditions"). None: labels
            ``i % num_classes`` for a class-conditional model.
        start: The index of the first sample.
        batch_size: Samples per ``module.sample`` call (default: all n at once).
        **options: Sampling settings for this call (``module.sampling``'s names).
    """
    if not paradigm.is_generative(module):
        raise ConfigError(
            f"{type(module).__name__} does not generate (no sample() and modality): "
            "load a generative model's checkpoint"
        )
    if n < 1:
        raise ConfigError(f"n={n}: ask for at least one sample")
    module.sampling_settings(**options)  # an unknown option: one line naming the allowed ones
    indices = list(range(start, start + n))
    conditions = resolve_cond(module, cond, indices)
    sources = getattr(module, "sources", None)  # image to image: sample i takes file i % len, as predict
    sources = sources(indices, **options) if callable(sources) else None
    if sources and not (isinstance(conditions, Mapping) and "image" in conditions):
        named = dict(conditions) if isinstance(conditions, Mapping) else {}
        if isinstance(conditions, Tensor):
            named["label"] = conditions
        conditions = {**named, **sources}
    step = batch_size or n
    parts = []
    for first in range(0, n, step):
        chunk = indices[first : first + step]
        generators = paradigm.sample_generators(seed, chunk)
        chunk_cond = _rows(conditions, first, first + len(chunk))
        with torch.no_grad():
            samples = module.sample(len(chunk), cond=chunk_cond, generator=generators, **options)
        parts.append(paradigm.finished(module, decode(module, samples), options))
    return join(parts)


def decode(module: Any, samples: Tensor) -> Media:
    """``module.sample()`` output -> its medium, through the module's media decoder (set by ``load``);
    images in [-1, 1] need none."""
    decoder = getattr(module, "media_decoder", None)
    if decoder is not None:
        decoded = decoder(samples)
        return decoded.cpu() if isinstance(decoded, Tensor) else decoded
    return media.to_media(None, module.modality, samples)


def join(parts: Sequence[Media]) -> Media:
    """Consecutive batches of one medium -> one (clips of one length are stacked)."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], media.Waveforms):
        return media.Waveforms(torch.cat([p.samples for p in parts]), parts[0].sample_rate)
    if isinstance(parts[0], Tensor):
        return torch.cat(list(parts))
    return [item for part in parts for item in part]


def resolve_cond(module: Any, cond: Any, indices: Sequence[int]) -> Any:
    """``cond`` for ``module.sample``: labels as an (n,) int64 tensor, names looked up in
    ``module.class_names``; None -> ``i % num_classes`` for a class-conditional model; a
    text-conditional model without a ``text`` condition takes its prompt i % len, as ``predict``."""
    num_classes = int(getattr(module, "num_classes", 0) or 0)
    n = len(indices)
    prompts = paradigm.predict_prompts(module, indices)  # a text model's prompt i % len, as predict
    if cond is None:
        cond = torch.tensor([i % num_classes for i in indices]) if num_classes > 0 else None
        if prompts is None:
            return cond
        return {"text": prompts, **({"label": cond} if cond is not None else {})}
    if isinstance(cond, Mapping):
        resolved = dict(cond)
        if "label" in resolved:
            resolved["label"] = labels(module, resolved["label"], n)
        if isinstance(resolved.get("text"), str):  # one caption for every sample
            resolved["text"] = [resolved["text"]] * n
        if "text" not in resolved and prompts is not None:
            resolved["text"] = prompts
        return resolved
    resolved_labels = labels(module, cond, n)
    return resolved_labels if prompts is None else {"label": resolved_labels, "text": prompts}


def labels(module: Any, value: Any, n: int) -> Tensor:
    """Class labels (n,) int64 from an index, a name, a sequence of either (one or n), or a tensor."""
    num_classes = int(getattr(module, "num_classes", 0) or 0)
    if num_classes == 0:
        raise ConfigError(f"{type(module).__name__} is unconditional: it takes no class label")
    if isinstance(value, Tensor):
        values = value.long().flatten().tolist()
    elif isinstance(value, (int, str)):
        values = [value]
    else:
        values = list(value)
    if len(values) not in (1, n):
        raise ConfigError(f"{len(values)} labels for {n} samples: give one label, or one per sample")
    ids = [label_index(module, v, num_classes) for v in values]
    return torch.tensor(ids * n if len(ids) == 1 else ids, dtype=torch.long)


def label_index(module: Any, value: Label, num_classes: int) -> int:
    """A class index from an index or a class name (``module.class_names``, or the digits of the
    index for models without names)."""
    names = [str(c) for c in (getattr(module, "class_names", None) or range(num_classes))]
    if isinstance(value, str) and value in names:
        return names.index(value)
    if isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < num_classes:
        return value
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    raise ConfigError(f"class {value!r} is not one of the model's {num_classes} classes: {shown}")


def save(samples: Media, path: Union[str, Path], *, start: int = 0, nrow: Optional[int] = None) -> list[Path]:
    """Write samples as files; returns the files written.

    - a ``.png`` path: images as one grid (``nrow`` per row);
    - a ``.txt`` path: texts as one listing;
    - a ``.wav`` path: one audio clip (and its spectrogram beside it, ``.png``);
    - any other path, a folder: one file per sample, ``sample_<start + i>.png`` / ``.txt`` / ``.wav``
      (+ a spectrogram ``.png`` per clip), plus ``grid.png`` for images or ``samples.txt`` for text, as
      ``lit-genai predict`` writes them.
    """
    path = Path(path)
    modality = _modality(samples)
    way = media.route(modality)
    names = media.sample_names(range(start, start + len(samples)))
    suffix = path.suffix.lower()
    if suffix in (".png", ".txt", ".wav"):
        wanted = {".png": "image", ".txt": "text", ".wav": "audio"}[suffix]
        if wanted != modality:
            raise ConfigError(f"{path}: a {suffix} file holds {wanted} samples, these are {modality}")
        path.parent.mkdir(parents=True, exist_ok=True)
        if modality == "audio":
            if len(samples) != 1:
                raise ConfigError(f"{path}: one .wav holds one clip, got {len(samples)}: give a folder")
            written = way.write(path.parent, [path.stem], samples)
            return [p for p in written if p.suffix == ".wav"]
        return [way.write_all(path.with_suffix(""), names, samples, nrow)]
    written = way.write(path, names, samples)
    if way.summary is not None:
        written.append(way.write_all(path / way.summary, names, samples, nrow))
    return written


def _modality(samples: Any) -> str:
    for modality, way in media.ROUTES.items():
        if way.is_medium(samples):
            return modality
    raise ConfigError(
        f"save() takes uint8 images (n, C, H, W), strings or Waveforms, got {type(samples).__name__}"
    )


def _rows(conditions: Any, begin: int, end: int) -> Any:
    """Rows begin:end of every condition (tensors and lists; other values are shared)."""
    if conditions is None:
        return None
    if isinstance(conditions, Mapping):
        return {k: _rows(v, begin, end) for k, v in conditions.items()}
    if isinstance(conditions, (Tensor, list, tuple)):
        return conditions[begin:end]
    return conditions
