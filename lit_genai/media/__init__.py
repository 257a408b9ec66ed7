"""Media: what samples become, and their routes to the loggers and to files, at the bottom of the
import graph (it imports torch, Lightning's logger classes, PIL, soundfile, torchvision and
``lit_genai.errors`` only), so data modules (``decode``), metrics and callbacks all import it and
none of them needs another's package.

The media contract (``docs/architecture.md``, "Media"):

- the module's ``modality`` (``"image"``, ``"text"`` or ``"audio"``, see ``lit_genai.paradigm``)
  picks the route, ``ROUTES[modality]``;
- the data module's ``decode(samples)`` turns ``module.sample()`` output into the medium:

  ========  =============================================  ==========================================
  modality  ``decode`` returns                             route
  ========  =============================================  ==========================================
  image     uint8 tensor (B, C, H, W)                      W&B image, TensorBoard image, PNG (+ grid)
  text      ``list[str]`` of B strings                     W&B table, TensorBoard text, ``.txt``
  audio     ``Waveforms`` ((B, T) float in [-1, 1], rate)  W&B audio, TensorBoard audio, WAV + PNG
  ========  =============================================  ==========================================

  A data module without ``decode`` is fine for images (``to_uint8`` of samples in [-1, 1]); text
  and audio have no such default, so ``to_media`` raises a ``ConfigError``.

Each medium has one ``Route`` object (``lit_genai.media.route``): ``log`` sends the medium to every
logger of the trainer that can show it (W&B, TensorBoard; CSV and other loggers only get the
files), ``write`` writes one file per sample named ``<name>.png`` / ``<name>.wav`` (+ ``<name>.png``
spectrogram) / ``<name>.txt``, and ``write_all`` one grid, listing or folder for the lot. The
functions behind them (``log_images``, ``write_image_grid``, ``log_audio``, ``write_text``, ...)
stay public for callers with one fixed medium (latent grids, adversarial pictures). Paradigms only
make ``sample`` and ``decode`` right; ``SampleLogger`` and ``SampleWriter``
(``lit_genai.callbacks.samples``) call the routes.

Files: ``route.py`` the ``Route`` interface and ``sample_names``; ``image.py``, ``audio.py``,
``text.py`` one medium each; ``sources.py`` the source images and masks of image to image.

Shape legend: B batch, C channels, H/W spatial, T time (audio frames).
"""

from __future__ import annotations

from typing import Any, Union

from torch import Tensor

from lit_genai.errors import ConfigError
from lit_genai.media.audio import (
    AudioRoute,
    Waveforms,
    log_audio,
    spectrogram,
    spectrogram_image,
    wav_bytes,
    write_audio,
)
from lit_genai.media.image import (
    ImageRoute,
    image_grid,
    log_images,
    png_bytes,
    to_uint8,
    write_image_grid,
    write_images,
)
from lit_genai.media.route import Route, sample_names
from lit_genai.media.text import TextRoute, log_text, write_text, write_text_listing

Media = Union[Tensor, list[str], Waveforms]

ROUTES: dict[str, Route[Any]] = {"image": ImageRoute(), "text": TextRoute(), "audio": AudioRoute()}


def route(modality: str) -> Route[Any]:
    """``ROUTES[modality]``, or a ``ConfigError`` naming the modalities that have a route."""
    if modality not in ROUTES:
        raise ConfigError(
            f"model.modality is {modality!r}: there is a media route for {', '.join(ROUTES)} only"
        )
    return ROUTES[modality]


def to_media(datamodule: Any, modality: str, samples: Tensor) -> Media:
    """``module.sample()`` output -> its medium, through ``datamodule.decode`` (module docstring).

    Raises:
        ConfigError: No route for ``modality``, or no ``decode`` where the medium has no default.
        TypeError: ``decode`` returned another medium or count (a bug of the data module).
    """
    way = route(modality)
    decode = getattr(datamodule, "decode", None)
    if decode is None:
        media = way.undecoded(samples)
        if media is not None:
            return media
        problem = (
            f"the data module {type(datamodule).__name__} has no decode(samples)"
            if datamodule is not None
            else "there is no data module to decode its samples"
        )
        raise ConfigError(
            f"model.modality is {modality!r} but {problem}: use a data module whose decode(samples) "
            f"returns {way.medium} (docs/architecture.md, Media)"
        )
    media = decode(samples)
    if not way.is_medium(media) or len(media) != len(samples):
        raise TypeError(
            f"{type(datamodule).__name__}.decode must return {way.medium} of {len(samples)} samples for "
            f"modality {modality!r}, got {type(media).__name__}"
        )
    return media.cpu() if isinstance(media, Tensor) else media


__all__ = [
    "ROUTES",
    "AudioRoute",
    "ImageRoute",
    "Media",
    "Route",
    "TextRoute",
    "Waveforms",
    "image_grid",
    "log_audio",
    "log_images",
    "log_text",
    "png_bytes",
    "route",
    "sample_names",
    "spectrogram",
    "spectrogram_image",
    "to_media",
    "to_uint8",
    "wav_bytes",
    "write_audio",
    "write_image_grid",
    "write_images",
    "write_text",
    "write_text_listing",
]
