"""What the service knows of each served model, read through the module contract only.

``describe(name, module)`` reads a loaded module's contract (``lit_genai.paradigm``: ``modality``,
``sampling`` / ``sampling_settings``, ``num_classes``, ``conditions``, ``class_names``, the predict
``seed``) into a ``ModelInfo``: a small picklable record, so that the HTTP processes can check
requests without the weights, and ``info_json`` turns it into the model entry of ``GET /info``
(paradigm, modality, sampling options with their defaults, types and limits, classes). No paradigm
is named here: a new paradigm that keeps the contract is served as it is.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Literal, Optional, Union

from lit_genai.errors import ConfigError

MEDIA_TYPES = {"image": "image/png", "audio": "audio/wav", "text": "text/plain"}


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """One served model as the service sees it (module docstring).

    Attributes:
        name: Its name in requests (``--model name=path``).
        paradigm: The module's class name (``Diffusion``, ``NextToken``, ...); ``class_path`` in full.
        modality: ``image``, ``audio`` or ``text``: what a response holds.
        conditions, num_classes, class_names: The module's conditions and classes.
        settings_type: The module's ``SamplingSettings`` class (the options' names and types).
        defaults: ``module.sampling_settings()``: each option's value when a request leaves it out.
        seed: The module's predict seed: a request's default seed.
        tokenwise: Whether text streams token by token (options ``prompt`` and ``max_new_tokens``).
    """

    name: str
    paradigm: str
    class_path: str
    modality: str
    conditions: tuple[str, ...]
    num_classes: int
    class_names: Optional[list[str]]
    settings_type: type
    defaults: dict[str, Any]
    seed: int
    tokenwise: bool

    @property
    def streams(self) -> bool:
        """Whether ``/stream`` serves it (text models)."""
        return self.modality == "text"


def describe(name: str, module: Any) -> ModelInfo:
    """The ``ModelInfo`` of a loaded generative module; one ``ConfigError`` line for anything else."""
    from lit_genai import paradigm

    if not paradigm.is_generative(module):
        raise ConfigError(
            f"--model {name}: {type(module).__name__} does not generate samples (no sample() and "
            "modality): serve a generative model's run folder or checkpoint"
        )
    defaults = dict(module.sampling_settings())
    num_classes = int(getattr(module, "num_classes", 0) or 0)
    names = getattr(module, "class_names", None)
    hparams = getattr(module, "hparams", {}) or {}
    cls = type(module)
    return ModelInfo(
        name=name,
        paradigm=cls.__name__,
        class_path=f"{cls.__module__}.{cls.__qualname__}",
        modality=module.modality,
        conditions=tuple(getattr(module, "conditions", ())),
        num_classes=num_classes,
        class_names=[str(c) for c in names] if names else None,
        settings_type=type(module.sampling),
        defaults=defaults,
        seed=int(hparams.get("seed", 0) or 0),
        tokenwise=module.modality == "text" and {"prompt", "max_new_tokens"} <= set(defaults),
    )


def check_defaults(info: ModelInfo, bounds: dict[str, int]) -> None:
    """One ``ConfigError`` line when a model's own setting is beyond a limit: every request that
    leaves the option out would be refused."""
    for name, high in bounds.items():
        value = info.defaults.get(name)
        if value is not None and value > high:
            flag = "--max_steps" if name == "steps" else f"--{name}"
            raise ConfigError(
                f"--model {info.name}: its sampling.{name} is {value}, above the service's limit {high}: "
                f"raise {flag} to at least {value}"
            )


def info_json(info: ModelInfo, bounds: dict[str, int]) -> dict[str, Any]:
    """The model's entry of ``GET /info``: what a client (and the web page) needs to build a request."""
    hints = typing.get_type_hints(info.settings_type)
    return {
        "paradigm": info.paradigm,
        "class_path": info.class_path,
        "modality": info.modality,
        "media_type": MEDIA_TYPES.get(info.modality),
        "conditions": list(info.conditions),
        "num_classes": info.num_classes,
        "classes": info.class_names or [str(i) for i in range(info.num_classes)],
        "seed": info.seed,
        "stream": info.streams,
        "sampling": {
            name: option_schema(hints[name], default, bounds.get(name))
            for name, default in info.defaults.items()
        },
    }


def option_schema(hint: Any, default: Any, high: Optional[int]) -> dict[str, Any]:
    """A sampling option as JSON: its default, a simple ``type`` (int, float, bool, str, choice),
    ``nullable``, the ``choices`` of a ``Literal`` and the service's ``max``."""
    nullable = False
    if typing.get_origin(hint) is Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(hint))
        hint = args[0] if len(args) == 1 else str  # str | list[int] (prompts), str | int (a class): text
    schema: dict[str, Any] = {"default": _plain(default), "nullable": nullable}
    if typing.get_origin(hint) is Literal:
        schema.update(type="choice", choices=list(typing.get_args(hint)))
    else:
        schema["type"] = {int: "int", float: "float", bool: "bool"}.get(hint, "str")
    if high is not None:
        schema.update(min=1, max=high)
    return schema


def _plain(value: Any) -> Any:
    """``value`` as JSON can hold it (tuples as lists; anything else JSON lacks as its text)."""
    return json.loads(json.dumps(value, default=str))
