"""Frozen first stages from checkpoints: networks kept as plain config, rebuilt safely.

Two-stage models (tokens of a VQ-VAE for a token model, latents of a KL autoencoder for latent
diffusion) read their first stage from a checkpoint by path (docs/architecture.md, "Autoencoders"):

- ``record_network_configs``: a module built in Python (networks passed as objects) keeps each
  network as plain ``class_path`` + ``init_args`` in its hyperparameters when the network keeps
  every init argument as an attribute of the same name (``lit_genai.nn.autoencoder``,
  ``lit_genai.nn.vq``), so its checkpoints can be rebuilt like those of ``lit-genai fit``;
- ``load_pretrained``: rebuild a frozen autoencoder from such a checkpoint with
  ``torch.load(weights_only=True)``, one ``ConfigError`` line for every bad file. The rebuilt module
  must keep the ``lit_genai.paradigm.Autoencoder`` protocol (a second stage encodes and decodes
  through it).
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import re
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, TypeVar

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from lit_genai import paradigm
from lit_genai.errors import ConfigError

# ---------------------------------------------------------------------- plain network configs

_PLAIN = (str, int, float, bool, type(None))


def _plain(value: Any) -> Any:
    """``value`` as YAML-able config (tuples as lists), or raise TypeError."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    raise TypeError(type(value).__name__)


def network_config(net: nn.Module) -> Optional[dict[str, Any]]:
    """``{"class_path": ..., "init_args": {...}}`` of ``net`` read back from its attributes, or None.

    Every init argument must be kept as an attribute of the same name holding a plain value (the
    rule of ``ImageDataModule.identity``); otherwise the network cannot be described and None is
    returned.
    """
    cls = type(net)
    init_args: dict[str, Any] = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name not in vars(net) and not isinstance(getattr(cls, name, None), property):
            return None  # not kept (a method or a submodule of that name does not count)
        try:
            init_args[name] = _plain(getattr(net, name))
        except TypeError:
            return None
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def record_network_configs(module: LightningModule, networks: Mapping[str, nn.Module]) -> None:
    """After ``save_plain_hyperparameters``: keep each network that was passed as an object (and so
    dropped from the hyperparameters) as its ``network_config``, when it has one. Under the command
    line the hyperparameters hold the config already and are left as they are."""
    for name, net in networks.items():
        if name in module.hparams:
            continue
        config = network_config(net)
        if config is not None:
            module.hparams[name] = config
            module._hparams_initial[name] = config


# ---------------------------------------------------------------------- loading a frozen first stage

M = TypeVar("M", bound=LightningModule)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _network_class(class_path: str, where: str) -> type[nn.Module]:
    """The class named by a checkpoint: lit_genai's are imported, others must be imported already
    (importing a module named by a file would run its code)."""
    module_name, _, name = class_path.rpartition(".")
    module = sys.modules.get(module_name)
    if module is None and module_name.split(".")[0] == "lit_genai":
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            module = None
    cls = getattr(module, name, None) if module is not None else None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(
            f"{where}: the network class {class_path!r} it names is not an imported nn.Module; "
            "import its module before loading"
        )
    return cls


def read_checkpoint(
    path: str | Path, where: str, missing_hint: str = "train one with lit-genai fit first"
) -> dict[str, Any]:
    """A Lightning checkpoint read with ``torch.load(weights_only=True)`` on the CPU, or one
    ``ConfigError`` line (``where``: what named the file) for a missing, truncated, corrupt or unsafe
    file and for a file that is not a Lightning checkpoint."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{where}: no such checkpoint file; {missing_hint}")
    if not zipfile.is_zipfile(file):
        with open(file, "rb") as f:
            zip_start = f.read(4) == b"PK\x03\x04"
        what = "truncated or corrupt checkpoint (an interrupted save?)" if zip_start else "not a checkpoint"
        raise ConfigError(f"{where}: {what}: it is not the zip archive torch.save writes")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
            what = f" ({refused[1]})" if refused else ""
            raise ConfigError(f"{where}: holds objects that safe loading refuses{what}") from None
        raise ConfigError(f"{where}: corrupt checkpoint ({_first_line(error)})") from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise ConfigError(f"{where}: corrupt checkpoint ({_first_line(error)})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(
            f"{where}: not a Lightning checkpoint (no state_dict); pass one saved by lit-genai fit"
        )
    return checkpoint


def load_pretrained(path: str, cls: type[M], key: str) -> M:
    """Rebuild a frozen autoencoder ``cls`` (``VQVAE``, ``KLAutoencoder``) from a checkpoint, in eval mode.

    The checkpoint is read with ``torch.load(weights_only=True)``. The networks come from the
    ``class_path`` + ``init_args`` entries of its hyperparameters: written by ``lit-genai fit``
    (LightningCLI stores the config), or by ``record_network_configs`` for a module built in
    Python. Optimiser and scheduler settings are not needed and not rebuilt. ``key`` is the config
    key that named the file, used in the messages. Raises one ``ConfigError`` line for: a missing
    file, an unreadable or corrupt one, a checkpoint of another module, a module that does not keep
    the ``lit_genai.paradigm.Autoencoder`` protocol, and weights that do not fit.
    """
    where = f"{key}={path}"
    checkpoint = read_checkpoint(path, where, f"train a {cls.__name__} with lit-genai fit first")
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    class_path = hparams.pop("_class_path", None)
    hparams.pop("_instantiator", None)
    wanted = f"a {cls.__name__} checkpoint ({cls.__module__}.{cls.__qualname__})"
    if class_path is not None:
        module_name, _, name = str(class_path).rpartition(".")
        found = getattr(sys.modules.get(module_name), name, None)
        if not (isinstance(found, type) and issubclass(found, cls)):
            raise ConfigError(f"{where}: a checkpoint of {class_path}, not {wanted}")
    networks = tuple(getattr(cls, "network_args", ()))
    missing = [
        n for n in networks if not isinstance(hparams.get(n), Mapping) or "class_path" not in hparams[n]
    ]
    if missing:
        raise ConfigError(
            f"{where}: not {wanted}: its hyperparameters have no {missing[0]} network "
            "(class_path + init_args)"
        )
    built: dict[str, Any] = {}
    for name in networks:
        config = hparams.pop(name)
        network_cls = _network_class(str(config["class_path"]), where)
        try:
            built[name] = network_cls(**dict(config.get("init_args") or {}))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}: cannot rebuild its {name} ({_first_line(error)})") from None
    accepted = inspect.signature(cls.__init__).parameters
    plain = {k: v for k, v in hparams.items() if k in accepted and k not in ("optimizer", "lr_scheduler")}
    module = cls(**built, **plain)
    if not paradigm.is_autoencoder(module):  # what a second stage reads of its first stage
        raise ConfigError(
            f"{where}: a {type(module).__name__} does not keep the Autoencoder protocol "
            "(lit_genai.paradigm.Autoencoder); give the checkpoint of an autoencoder"
        )
    try:
        module.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as error:
        raise ConfigError(f"{where}: its weights do not fit its networks ({_first_line(error)})") from None
    module.eval()
    module.requires_grad_(False)
    return module


# ---------------------------------------------------------------------- a pre-trained text encoder


class PretrainedTextEncoder(nn.Module):
    """The text encoder of a text-to-image checkpoint, frozen: pre-trained once, then reused.

    Give it as a network's ``text_encoder`` (``class_path: lit_genai.pretrained.PretrainedTextEncoder``,
    ``init_args: {checkpoint: runs/<run>/checkpoints/last.ckpt}``): the encoder is rebuilt from the
    checkpoint's ``net.init_args.text_encoder`` config (``torch.load(weights_only=True)``), with the
    EMA average of its weights when the checkpoint has one (``ema``), and tokenizes as that model
    did: the ``text_vocabulary`` in its hyperparameters, or bytes. It keeps the text-encoder
    interface (``nn.text_encoder``): ``width``, ``max_length``, ``vocab_size``, ``frozen = True`` (no
    gradient, always in eval mode, never optimised), ``tokenize``, ``forward(ids, mask)``.

    Args:
        checkpoint: A checkpoint of a module whose network has a ``text_encoder``.
        ema: Use the EMA average of the encoder's weights when the checkpoint holds one.
    """

    frozen = True

    def __init__(self, checkpoint: str, ema: bool = True) -> None:
        super().__init__()
        from lit_genai.text_condition import CaptionTokenizer  # above nn/: imported where it is used

        where = f"text_encoder.checkpoint={checkpoint}"
        self.checkpoint, self.ema = checkpoint, ema
        ckpt = read_checkpoint(checkpoint, where, "train a text-to-image model with lit-genai fit first")
        hparams = dict(ckpt.get("hyper_parameters") or {})
        net = hparams.get("net")
        config = (net.get("init_args") or {}).get("text_encoder") if isinstance(net, Mapping) else None
        if not isinstance(config, Mapping) or "class_path" not in config:
            raise ConfigError(f"{where}: its network has no text_encoder (class_path + init_args) to reuse")
        encoder_cls = _network_class(str(config["class_path"]), where)
        try:
            encoder = encoder_cls(**{**dict(config.get("init_args") or {}), "frozen": True})
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}: cannot rebuild its text_encoder ({_first_line(error)})") from None
        prefix = "net.text_encoder."
        state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        shadow = (ckpt.get("callbacks") or {}).get("EMA", {}).get("shadow") if ema else None
        if shadow:  # keyed like the averaged network's state dict: "text_encoder.<name>"
            state.update(
                {k[len("text_encoder.") :]: v for k, v in shadow.items() if k.startswith("text_encoder.")}
            )
        try:
            encoder.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ConfigError(
                f"{where}: its text encoder's weights do not fit ({_first_line(error)})"
            ) from None
        self.encoder = encoder.eval().requires_grad_(False)
        self.width, self.max_length = int(encoder.width), int(encoder.max_length)
        self.vocab_size = int(encoder.vocab_size)
        self._tokenizer = CaptionTokenizer(hparams.get("text_vocabulary"), self.max_length)

    def train(self, mode: bool = True) -> PretrainedTextEncoder:
        return super().train(False)  # frozen: always in eval mode

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Captions -> ids (B, L), mask (B, L), with the vocabulary the encoder was trained on."""
        return self._tokenizer(texts)

    def forward(self, ids: Tensor, mask: Optional[Tensor] = None) -> Any:
        """ids, mask (B, L) -> ``TextContext`` (no gradient)."""
        with torch.no_grad():
            return self.encoder(ids, mask)
