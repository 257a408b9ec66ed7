"""``load``: a trained model back from its run folder or checkpoint, ready to sample, without the data.

    module = lit_genai.load("runs/diffusion-mnist")            # the run folder: checkpoints/last.ckpt
    module = lit_genai.load("runs/diffusion-mnist/checkpoints/best-epoch=14-step=945.ckpt", device="cuda")

How the module is rebuilt (docs/architecture.md, "Use"):

1. the checkpoint is read with ``torch.load(weights_only=True)`` (``pretrained.read_checkpoint``);
2. the model is built from the run's ``config.yaml`` (what ``lit-genai fit`` saved: class paths,
   networks, sampling settings) by jsonargparse, as the command line builds it, and the values the
   command line links from the data (``cli.LINKED_FROM_DATA``: sample shape, vocabulary, classes,
   class names, ...) come from the checkpoint's hyperparameters, so the data need not be on disk.
   Without a ``config.yaml`` the checkpoint's own hyperparameters are the config (default sampling
   settings);
3. the weights are loaded strictly, then the EMA average over the EMA target (the checkpoint holds
   the training weights; the EMA callback's state holds the average) unless ``ema=False``;
4. the module is put in eval mode with gradients off, on ``device``, and given the media decoder its
   data module saved in the checkpoint (``data.decoders``) as ``module.media_decoder``.

Relative paths in the config (a latent model's autoencoder, image tokens' tokenizer) are read from
the folder ``lit-genai fit`` ran in: the run folder less its ``trainer.default_root_dir``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
import yaml
from lightning.pytorch import LightningModule

from lit_genai import paradigm
from lit_genai.cli import LINKED_FROM_DATA  # the links of the command line, replayed here
from lit_genai.data.decoders import ImageDecoder, TextDecoder, decoder_from_config
from lit_genai.errors import ConfigError
from lit_genai.pretrained import read_checkpoint

PathLike = Union[str, "os.PathLike[str]"]

CONFIG_FILE = "config.yaml"
# What Lightning itself writes into a checkpoint (a data module's state sits under its class name).
LIGHTNING_KEYS = frozenset(
    {"state_dict", "hyper_parameters", "callbacks", "loops", "optimizer_states", "lr_schedulers"}
    | {"epoch", "global_step", "pytorch-lightning_version", "hparams_name", "datamodule_hyper_parameters"}
)


def load(path: PathLike, *, device: Union[str, torch.device] = "cpu", ema: bool = True) -> LightningModule:
    """The trained module of a run folder or checkpoint, in eval mode on ``device``, ready to sample.

    Args:
        path: A run folder (``runs/<name>``: its ``checkpoints/last.ckpt`` is read, ``best`` if there is
            no ``last``), its ``checkpoints/`` folder, or a checkpoint file.
        device: Where the module's weights go.
        ema: Put the EMA average in (when the run kept one); False gives the training weights.

    Returns:
        The module (a ``GenerativeModule``, or an autoencoder), with ``media_decoder`` (samples ->
        medium, or None where the checkpoint has none) and ``checkpoint_path`` set.

    Raises:
        ConfigError: One line for a missing, corrupt or unsafe checkpoint, a checkpoint of a module
            that neither generates nor autoencodes, a config.yaml of another model, or a checkpoint
            whose model cannot be rebuilt (no config.yaml and no networks in its hyperparameters).
    """
    ckpt = checkpoint_file(Path(path).expanduser())
    where = str(ckpt)
    checkpoint = read_checkpoint(ckpt, where, "train one with lit-genai fit first, or pass a run folder")
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    config = read_config(run / CONFIG_FILE)
    model_config = rebuildable_config(checkpoint, config, where)
    with working_folder(fit_folder(run, config)):
        module = build_module(model_config, where)
        decoder = media_decoder(checkpoint, config, module, where)
    if not (paradigm.is_generative(module) or paradigm.is_autoencoder(module)):
        raise ConfigError(
            f"{where}: a checkpoint of {type(module).__name__}, which neither generates nor autoencodes "
            "(no GenerativeModule or Autoencoder contract): load a generative model's checkpoint"
        )
    module.on_load_checkpoint(checkpoint)
    try:
        module.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ConfigError(f"{where}: its weights do not fit the model of its config ({first})") from None
    module.ema_loaded = ema and load_ema(module, checkpoint)
    module.media_decoder = decoder
    module.checkpoint_path = str(ckpt)
    module.eval()
    module.requires_grad_(False)
    return module.to(device)


def checkpoint_file(path: Path) -> Path:
    """The checkpoint a ``load`` path names: the file, or a run / checkpoints folder's ``last.ckpt``
    (its newest ``best-*.ckpt`` without one). A folder with neither is one ``ConfigError`` line."""
    if not path.is_dir():
        return path  # read_checkpoint says "no such file" in one line
    for folder in (path / "checkpoints", path):
        if (folder / "last.ckpt").is_file():
            return folder / "last.ckpt"
        best = sorted(folder.glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
        if best:
            return best[-1]
    raise ConfigError(
        f"{path}: no checkpoint in this folder or its checkpoints/ (last.ckpt or best-*.ckpt): "
        "train with lit-genai fit first, or pass a checkpoint file"
    )


def read_config(path: Path) -> Optional[dict[str, Any]]:
    """The run's saved ``config.yaml`` as a dict, None when there is none."""
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not readable YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ConfigError(f"{path}: has no model section; it is not the config lit-genai fit saves")
    return config


def rebuildable_config(
    checkpoint: Mapping[str, Any], config: Optional[Mapping[str, Any]], where: str
) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of the model: the run's config with the linked data values from
    the checkpoint's hyperparameters, or the hyperparameters alone without a config."""
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    class_path = hparams.pop("_class_path", None)
    hparams.pop("_instantiator", None)
    if config is not None:
        model = config["model"]
        if class_path is not None and model.get("class_path") != class_path:
            raise ConfigError(
                f"{where}: a checkpoint of {class_path}, but the run's {CONFIG_FILE} builds "
                f"{model.get('class_path')}: pass the checkpoint of this run, or its own run folder"
            )
        init_args = dict(model.get("init_args") or {})
        accepted = init_parameters(str(model.get("class_path")))
        for name in LINKED_FROM_DATA:  # the command line's links, from the values the model was built with
            if name in hparams and (accepted is None or name in accepted):
                init_args[name] = hparams[name]
        return {"class_path": model["class_path"], "init_args": init_args}
    if class_path is None:
        raise ConfigError(
            f"{where}: no {CONFIG_FILE} beside its run folder and no model class in the checkpoint: "
            "keep the run folder that lit-genai fit wrote (config.yaml + checkpoints/)"
        )
    return {"class_path": class_path, "init_args": hparams}


def init_parameters(class_path: str) -> Optional[set[str]]:
    """The ``__init__`` arguments of the class a config names (None where it cannot be imported: the
    parser then says why). A link is skipped for a model without the argument, as in the command line."""
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
        return set(inspect.signature(cls.__init__).parameters)
    except (ImportError, AttributeError, ValueError, TypeError):
        return None


def build_module(model_config: Mapping[str, Any], where: str) -> LightningModule:
    """Instantiate the model's config with jsonargparse, as ``lit-genai fit`` does."""
    from jsonargparse import ArgumentParser  # the command line's parser library

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model", required=True)
    try:
        parsed = parser.parse_object({"model": dict(model_config)})
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
        return instantiate(parsed).model
    except Exception as error:  # jsonargparse wraps the model's own errors: show the cause's line
        cause = _root_cause(error)
        if isinstance(cause, ConfigError):
            raise ConfigError(f"{where}: {cause}") from None
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise ConfigError(
            f"{where}: cannot rebuild its model {model_config.get('class_path')} ({first})"
        ) from None


def load_ema(module: LightningModule, checkpoint: Mapping[str, Any]) -> bool:
    """Put the EMA callback's average (``callbacks["EMA"]["shadow"]``) into the module's EMA target;
    whether there was one."""
    shadow = ((checkpoint.get("callbacks") or {}).get("EMA") or {}).get("shadow")
    if not shadow:
        return False
    name = getattr(module, "ema_target", None)
    target = module if name is None else module.get_submodule(name)
    target.load_state_dict(shadow)
    return True


def media_decoder(
    checkpoint: Mapping[str, Any], config: Optional[Mapping[str, Any]], module: Any, where: str
) -> Any:
    """The media decoder the data module saved in the checkpoint (``data.decoders``); images in [-1, 1]
    need none (``ImageDecoder``); None for other samples of a checkpoint without one."""
    data_class = str(((config or {}).get("data") or {}).get("class_path", ""))
    states = [checkpoint.get(data_class.rpartition(".")[2])] if data_class else []
    # Without a config: a data module's state is under its class name, beside Lightning's own keys.
    states += [v for k, v in checkpoint.items() if k not in LIGHTNING_KEYS and isinstance(v, Mapping)]
    for state in states:
        if isinstance(state, Mapping) and isinstance(state.get("decoder"), Mapping):
            return decoder_from_config(state["decoder"], where)
        if isinstance(state, Mapping) and state.get("tokenizer") in ("char", "byte", "gpt2"):
            # CharText's state before decoders were saved: the tokenizer and its vocabulary.
            vocabulary = state.get("vocabulary")
            size = len(vocabulary) if vocabulary else int(getattr(module, "vocab_size", 256))
            return TextDecoder(state["tokenizer"], vocabulary, size)
    if getattr(module, "modality", None) == "image" and not getattr(module, "vocab_size", None):
        return ImageDecoder()
    return None


def fit_folder(run: Path, config: Optional[Mapping[str, Any]]) -> Path:
    """The folder ``lit-genai fit`` ran in: the run folder less its ``trainer.default_root_dir``."""
    root = str(((config or {}).get("trainer") or {}).get("default_root_dir") or "")
    parts = Path(root).parts if root and not os.path.isabs(root) else ()
    resolved = run.resolve()
    if parts and resolved.parts[-len(parts) :] == parts:
        return resolved.parents[len(parts) - 1]
    return resolved.parent


@contextlib.contextmanager
def working_folder(folder: Path) -> Iterator[None]:
    """Run the block in ``folder`` (relative paths in the config), then go back."""
    previous = os.getcwd()
    try:
        os.chdir(folder)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        os.chdir(previous)


def _root_cause(error: BaseException) -> BaseException:
    seen: set[int] = set()
    cause = error
    while id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConfigError):
            return cause
        nxt = cause.__cause__ or cause.__context__
        if nxt is None:
            break
        cause = nxt
    # jsonargparse lists each subtype's error in its message: the model's own error is the first line
    # after "Errors:".
    text = str(error)
    marker = "Errors:\n  - "
    if marker in text:
        return RuntimeError(text.split(marker, 1)[1].splitlines()[0])
    return cause


__all__ = ["checkpoint_file", "load"]
