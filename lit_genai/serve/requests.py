"""What a generation request may ask for: its JSON fields, their checks and the service's limits.

A request is one JSON object (docs/architecture.md, "Serve"):

==========  =========================================================================================
field       meaning
==========  =========================================================================================
model       the served model's name (optional when one model is served)
n           number of samples (1 .. ``max_n``), default 1
seed        sample i is drawn from the generator ``seed + i`` (default: the model's own ``seed``,
            the one ``lit-genai predict`` uses), so the same request gives the same bytes
start       index of the first sample (default 0): sample i of ``predict`` is ``start=i, n=1``
label       a named condition: a class index or class name, or one per sample; absent: sample i
            gets class ``i % num_classes``, as in ``predict``
text        a caption, or one per sample, for a text-to-image model (the ``text`` condition)
image       image to image: a base64 PNG (a ``data:image/png;base64,`` URL too), or one per sample,
            of the model's size: SDEdit's source, or the image to inpaint (the ``image`` condition)
mask        the region of ``image`` to fill: a base64 PNG (white = fill) or a named region
            (``left_half``, ``right_half``, ``top_half``, ``bottom_half``, ``center``)
prompt      the model's ``prompt`` sampling option: the text a sample starts from (text models), or
            the caption(s) of a text-to-image model, sample i taking caption i % len; a model
            fine-tuned on prompt/response data renders it with its template and answers with the
            response alone, cut at the template's stop (``ar.chat``); ``options.conversation``
            gives it the turns so far instead (a list of ``{"role", "content"}``)
options     sampling options by the module's ``sampling`` names (``steps``, ``temperature``, ...)
format      ``auto`` (PNG for one image, WAV for one clip, else JSON), ``json``, ``png``, ``wav``
==========  =========================================================================================

``parse_request`` turns such an object into a ``Job`` or raises ``RequestError`` (an HTTP status
and one line): 400 for a malformed field, an unknown option or class, 404 for a model that is not
served, 422 for a value beyond a limit (``Limits``: ``n``, ``steps``, ``max_new_tokens``, the
prompt's length), each message naming what is allowed. It runs twice: in the HTTP process before a
request is queued (``check.RequestCheck``), where it answers 4xx, and in the model's worker, which
builds the ``Job``.

Named conditions are parsed by ``CONDITIONS``: one function per request field (``label``,
``text``, ``image``, ``mask``); another condition joins by adding its field and parser there. The
sampling options that name files on the server (``FILE_OPTIONS``: ``init_image``, ``mask``,
``tokenizer``, and ``conversation`` given as a file) are refused: a request sends its source in
``image`` and ``mask``, a conversation's turns in ``options.conversation``.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable, Mapping
from typing import Any, Optional

from torch import Tensor

from lit_genai.errors import LitGenAIError
from lit_genai.serve.catalog import ModelInfo

FORMATS = ("auto", "json", "png", "wav")
MAX_SEED = 2**53  # exact in JSON numbers (IEEE doubles) and in torch's manual_seed


class RequestError(Exception):
    """A request the service refuses: an HTTP ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for, so that no request can exhaust the machine (each is a 422).

    Args:
        max_n: Samples per request (and per ``module.sample`` call of a batch).
        max_steps: The ``steps`` sampling option (diffusion, flow, EDM, MaskGIT).
        max_new_tokens: The ``max_new_tokens`` sampling option (next-token text and audio).
        max_prompt: Characters of a text prompt (or token ids of a prompt given as ids).
        max_payload_size: Bytes of a request body (LitServe's ``max_payload_size``: a 413).
    """

    max_n: int = 16
    max_steps: int = 1000
    max_new_tokens: int = 4096
    max_prompt: int = 2000
    max_payload_size: int = 1_000_000

    def bounds(self) -> dict[str, int]:
        """{sampling option: its largest value}."""
        return {"steps": self.max_steps, "max_new_tokens": self.max_new_tokens}


@dataclasses.dataclass(frozen=True)
class Job:
    """One checked request, as the worker draws it.

    Attributes:
        model: The served model's name.
        n, seed, start: Samples ``start .. start + n - 1``, sample i from the generator ``seed + i``.
        cond: Named conditions, one row per sample (``{"label": (n,) int64}``), or None.
        options: The sampling options given (checked and converted to their types).
        format: ``png``, ``wav`` or ``json`` (``auto`` resolved).
    """

    model: str
    n: int
    seed: int
    start: int
    cond: Optional[dict[str, Tensor]]
    options: dict[str, Any]
    format: str

    def batch_key(self) -> tuple[str, str, tuple[str, ...]]:
        """Requests with equal keys can share ``module.sample`` calls: same model, same options, the
        same condition names (an image-to-image request is not batched with a plain one)."""
        return self.model, repr(sorted(self.options.items())), tuple(sorted(self.cond or {}))


def parse_request(
    body: Any, catalog: Mapping[str, ModelInfo], limits: Limits, *, stream: bool = False
) -> Job:
    """A request's JSON object -> its ``Job``; ``RequestError`` for anything the service refuses."""
    if not isinstance(body, Mapping):
        raise RequestError(400, f"the request must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise RequestError(400, f"unknown field(s) {', '.join(unknown)}; the fields are: {', '.join(FIELDS)}")
    info = _model(body.get("model"), catalog)
    if stream and not info.streams:
        raise RequestError(400, f"model {info.name!r} makes {info.modality}: /stream serves text models only")
    n = _integer(body, "n", 1, 1, limits.max_n, status=422)
    seed = _integer(body, "seed", info.seed, 0, MAX_SEED - 1)
    start = _integer(body, "start", 0, 0, 2**31 - 1)
    options = _options(body.get("options"), info, limits)
    if body.get("prompt") is not None:
        if "prompt" not in info.defaults:
            raise RequestError(400, f"model {info.name!r} ({info.paradigm}) takes no prompt")
        if "prompt" in options:
            raise RequestError(400, "give the prompt once: as prompt or as options.prompt")
        options["prompt"] = _option_value(info, "prompt", body["prompt"])
    _check_bounds(info, options, limits)
    cond = _conditions(body, info, range(start, start + n))
    return Job(info.name, n, seed, start, cond, options, _format(body.get("format"), info, n))


# ---------------------------------------------------------------------- fields


def _model(name: Any, catalog: Mapping[str, ModelInfo]) -> ModelInfo:
    served = ", ".join(catalog)
    if name is None:
        if len(catalog) == 1:
            return next(iter(catalog.values()))
        raise RequestError(400, f"several models are served ({served}): name one in the field model")
    if not isinstance(name, str) or name not in catalog:
        raise RequestError(404, f"model {name!r} is not served; the models are: {served}")
    return catalog[name]


def _integer(
    body: Mapping[str, Any], field: str, default: int, low: int, high: int, status: int = 400
) -> int:
    value = body.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"{field} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise RequestError(status, f"{field}={value} is outside {low} .. {high}")
    return value


def _format(value: Any, info: ModelInfo, n: int) -> str:
    value = "auto" if value is None else value
    if value not in FORMATS:
        raise RequestError(400, f"format {value!r} is not one of: {', '.join(FORMATS)}")
    single = {"image": "png", "audio": "wav"}.get(info.modality)
    if value == "auto":
        return single if single is not None and n == 1 else "json"
    if value != "json" and value != single:
        formats = ", ".join(f for f in FORMATS if f in ("auto", "json", single))
        raise RequestError(
            400, f"format {value!r} does not fit model {info.name!r} ({info.modality}): use {formats}"
        )
    if value != "json" and n != 1:
        raise RequestError(400, f"format {value!r} holds one sample but n={n}: ask for n=1 or format json")
    return value


def _options(options: Any, info: ModelInfo, limits: Limits) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise RequestError(
            400, f"options must be a JSON object of sampling options, got {type(options).__name__}"
        )
    files = sorted(set(options) & set(FILE_OPTIONS))
    if files:
        raise RequestError(
            400,
            f"options.{files[0]} names a file on the server: send the source image and mask in the "
            "request's image and mask fields (base64 PNG)",
        )
    if isinstance(options.get("conversation"), str):
        raise RequestError(
            400,
            "options.conversation names a file on the server: send the turns themselves, a list of "
            '{"role": ..., "content": ...} objects',
        )
    unknown = sorted(set(options) - set(info.defaults))
    if unknown:
        raise RequestError(
            400,
            f"unknown sampling option(s) {', '.join(unknown)} for model {info.name!r}; "
            f"the options are: {', '.join(info.defaults) or 'none'}",
        )
    return {name: _option_value(info, name, value) for name, value in options.items()}


@functools.cache
def _adapter(settings_type: type, name: str) -> Any:
    from pydantic import TypeAdapter  # FastAPI's validation library, there with LitServe

    return TypeAdapter(typing.get_type_hints(settings_type)[name])


def _option_value(info: ModelInfo, name: str, value: Any) -> Any:
    """``value`` checked against the type of the setting (``Literal`` choices, ``Optional``, numbers)."""
    from pydantic import ValidationError

    try:
        return _adapter(info.settings_type, name).validate_python(value)
    except ValidationError as error:
        reason = error.errors()[0]["msg"]
        raise RequestError(400, f"options.{name}={value!r}: {reason}") from None


def _check_bounds(info: ModelInfo, options: Mapping[str, Any], limits: Limits) -> None:
    values = {**info.defaults, **options}
    for name, high in limits.bounds().items():
        if name in values and values[name] is not None and not 1 <= values[name] <= high:
            raise RequestError(
                422, f"options.{name}={values[name]} is outside 1 .. {high} (the service's limit)"
            )
    prompt = options.get("prompt")
    if prompt is not None and len(prompt) > limits.max_prompt:
        raise RequestError(422, f"the prompt has {len(prompt)} characters; the limit is {limits.max_prompt}")
    turns = options.get("conversation") or []
    if sum(len(turn["content"]) for turn in turns) > limits.max_prompt:
        raise RequestError(422, f"the conversation has more than the limit of {limits.max_prompt} characters")


# ---------------------------------------------------------------------- named conditions


def _label(value: Any, info: ModelInfo, indices: range) -> Tensor:
    """A class index or name, or one per sample -> (n,) int64 labels (``lit_genai.api``'s rules)."""
    from lit_genai.api.generate import labels

    if info.num_classes == 0:
        raise RequestError(400, f"model {info.name!r} is unconditional: it takes no label")
    if not isinstance(value, (int, str, list)) or isinstance(value, bool):
        raise RequestError(400, f"label must be a class index, a class name or a list of them, got {value!r}")
    return labels(info, value, len(indices))


def _text(value: Any, info: ModelInfo, indices: range) -> list[str]:
    """A caption, or one per sample -> n captions (the module's tokenizer checks their words)."""
    if "text" not in info.conditions:
        raise RequestError(400, f"model {info.name!r} is not text-conditional: it takes no text")
    captions = [value] if isinstance(value, str) else value
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise RequestError(400, f"text must be a caption or a list of captions, got {value!r}")
    if len(captions) not in (1, len(indices)):
        raise RequestError(
            400, f"{len(captions)} captions for {len(indices)} samples: give one, or one per sample"
        )
    return captions * len(indices) if len(captions) == 1 else captions


def _png(value: Any, field: str) -> Tensor:
    """A base64 PNG (or a data URL of one) -> (1, C, H, W) uint8: C = 1 for a grey PNG (or an RGB one
    whose channels are equal, as ``predict`` writes grey samples), else 3 (RGB); a grey source of an
    RGB model is repeated over its channels by the module."""
    import base64
    import binascii
    import io

    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    if not isinstance(value, str):
        raise RequestError(400, f"{field} must be a base64 PNG or a list of them, got {type(value).__name__}")
    try:
        with Image.open(io.BytesIO(base64.b64decode(value.split(",", 1)[-1], validate=True))) as image:
            grey = image.mode in ("1", "L", "LA", "I", "I;16")
            pixels = np.asarray(image.convert("L" if grey else "RGB"))
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        raise RequestError(400, f"{field} is not a base64 PNG") from None
    tensor = torch.from_numpy(pixels.copy())
    tensor = tensor[None] if grey else tensor.permute(2, 0, 1)  # (C, H, W) uint8
    if not grey and bool((tensor == tensor[:1]).all()):  # equal channels (a saved grey sample): grey
        tensor = tensor[:1]
    return tensor[None]  # (1, C, H, W)


def _per_sample(value: Any, field: str, indices: range) -> list[Any]:
    values = value if isinstance(value, list) else [value]
    if len(values) not in (1, len(indices)):
        raise RequestError(
            400, f"{len(values)} {field}s for {len(indices)} samples: give one, or one per sample"
        )
    return values * len(indices) if len(values) == 1 else values


def _takes_images(info: ModelInfo) -> bool:
    return "image" in info.conditions or "init_image" in info.defaults


def _image(value: Any, info: ModelInfo, indices: range) -> Tensor:
    """One base64 PNG, or one per sample -> (n, C, H, W) source images in [-1, 1]."""
    import torch

    if not _takes_images(info):
        raise RequestError(400, f"model {info.name!r} ({info.paradigm}) takes no source image")
    images = [_png(v, "image") for v in _per_sample(value, "image", indices)]
    if len({tuple(i.shape) for i in images}) != 1:
        raise RequestError(400, "the images of one request must have one size")
    return torch.cat(images).float() / 127.5 - 1.0  # (n, C, H, W), as media.sources.read_images


def _mask(value: Any, info: ModelInfo, indices: range) -> Any:
    """A named region (resolved at the image's size in ``_conditions``), or one base64 PNG or one per
    sample -> (n, 1, H, W) bool, True where to fill (white)."""
    import torch

    from lit_genai.media.sources import NAMED_MASKS

    if not _takes_images(info):
        raise RequestError(400, f"model {info.name!r} ({info.paradigm}) takes no mask")
    if isinstance(value, str) and value in NAMED_MASKS:
        return value
    masks = [_png(v, "mask")[:, :1] >= 128 for v in _per_sample(value, "mask", indices)]
    if len({tuple(m.shape) for m in masks}) != 1:
        raise RequestError(400, "the masks of one request must have one size")
    return torch.cat(masks)  # (n, 1, H, W) bool


CONDITIONS: dict[str, Callable[[Any, ModelInfo, range], Any]] = {
    "label": _label,
    "text": _text,
    "image": _image,
    "mask": _mask,
}
"""Request field -> parser of its value into the condition of that name (``lit_genai.conditions``)."""

FIELDS = ("model", "n", "seed", "start", *CONDITIONS, "prompt", "options", "format")
FILE_OPTIONS = ("init_image", "mask", "tokenizer")
"""Sampling options that name files on the server: never taken from a request."""


def _conditions(body: Mapping[str, Any], info: ModelInfo, indices: range) -> Optional[dict[str, Tensor]]:
    from lit_genai.api.generate import resolve_cond

    cond = {}
    for name, parse in CONDITIONS.items():
        if body.get(name) is not None:
            try:
                cond[name] = parse(body[name], info, indices)
            except LitGenAIError as error:
                raise RequestError(400, str(error)) from None
    if "mask" in cond:
        if "image" not in cond:
            raise RequestError(400, "a mask needs the image to fill: give the field image too")
        if isinstance(cond["mask"], str):  # a named region at the image's size
            from lit_genai.media.sources import named_mask

            H, W = cond["image"].shape[-2:]
            cond["mask"] = named_mask(cond["mask"], (H, W)).expand(len(indices), 1, H, W)
    resolved = resolve_cond(info, cond or None, indices)  # no label: i % num_classes, as predict
    if resolved is None:
        return None
    return dict(resolved) if isinstance(resolved, Mapping) else {"label": resolved}
