"""A trained model's network as a Hugging Face Hub folder: config.json + model.safetensors + README.md.

``save_pretrained(module_or_net, folder, metrics=...)`` writes the folder; ``from_pretrained(folder or
"user/repo")`` rebuilds the network from it. The folder is what huggingface_hub's
``PyTorchModelHubMixin`` writes (the config, the weights as safetensors, a model card), but made by two
functions rather than a base class: the mixin replaces a class's ``__new__`` to record the init
arguments, loads weights with ``strict=False`` and prints while loading, and most of our networks do
not keep every init argument as an attribute (``lit_genai.pretrained.network_config``), whereas a
run's ``config.yaml`` holds the network's config exactly as the experiment's YAML gave it
(``network_of``: where the config comes from).

``config.json``::

    {"library_name": "lit_genai",
     "class_path": "lit_genai.nn.UNet", "init_args": {...},     # the YAML's ``net:``, as in checkpoints
     "model": {"class_path": "lit_genai.diffusion.Diffusion",   # saved from a module: what the model is
               "network": "net", "modality": "image", "hyperparameters": {...},
               "sampling": {...}, "decoder": {...}}}

``model.safetensors`` holds the network's weights (``safetensors.torch.save_model``: a tied weight
once); the module's, for a loaded module, are its EMA weights. ``README.md`` is the model card: Hub
metadata (``library_name``, tags, pipeline tag), what the model is (paradigm, network, data,
hyperparameters, sampling settings) and, given a run's test JSON (``lit-genai test`` writes
``checkpoints/last.test.json``, ``callbacks/evaluation.py``), its metrics and their protocol.

To publish a folder: ``huggingface_hub.upload_folder(repo_id="user/name", folder_path=folder)``;
``from_pretrained("user/name")`` then downloads it into the Hub cache (``HF_HUB_OFFLINE=1``: the
cache only). Every unusable folder or repository is one ``ConfigError`` line.
"""

from __future__ import annotations

import copy
import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
from lightning.pytorch import LightningModule
from torch import nn

from lit_genai.errors import ConfigError
from lit_genai.pretrained import _network_class, network_config

CONFIG, WEIGHTS, CARD = "config.json", "model.safetensors", "README.md"
LIBRARY = "lit_genai"
MEDIA = {"image": "images", "text": "text", "audio": "audio"}
PIPELINE_TAGS = {"image": "unconditional-image-generation", "text": "text-generation"}
TestResults = Union[str, Path, Mapping[str, Any], None]


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(
            f"Hugging Face folders need the {name.partition('.')[0]} package: "
            "pip install 'lit_genai[interop]'"
        ) from None


def _class_path(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _is_config(value: Any) -> bool:
    return isinstance(value, Mapping) and "class_path" in value


# ---------------------------------------------------------------------- what is saved


def network_of(
    module_or_net: nn.Module,
    network: Optional[str] = None,
    config: Optional[Mapping[str, Any]] = None,
    required: bool = True,
) -> tuple[Optional[str], nn.Module, Optional[dict[str, Any]]]:
    """(name in the module or None, the network, its ``{"class_path", "init_args"}``).

    The network of a module is ``network``, else the one it samples with (``ema_target``). Its config
    is ``config``, else the run's ``config.yaml`` (a module from ``lit_genai.api.load``, which sets
    ``checkpoint_path``), else the module's hyperparameters (a module built by LightningCLI), else
    read back from the network's attributes (``network_config``); otherwise one ``ConfigError`` line
    (None when not ``required``: a model card can do without it).
    """
    name: Optional[str] = None
    net = module_or_net
    if isinstance(module_or_net, LightningModule):
        module = module_or_net
        name = network or getattr(module, "ema_target", None)
        children = [n for n, _ in module.named_children()]
        if name is None or not isinstance(getattr(module, name, None), nn.Module):
            raise ConfigError(
                f"save_pretrained: a {type(module).__name__} has no network {name!r}; name one with "
                f"network= ({', '.join(children) or 'its network attribute'})"
            )
        net = getattr(module, name)
        for source in (_run_model_config(module), module.hparams):
            if config is None and _is_config(source.get(name)):
                config = source[name]
    config = config if config is not None else network_config(net)
    if config is None and not required:
        return name, net, None
    if config is None:
        raise ConfigError(
            f"save_pretrained: a {type(net).__name__} does not keep its init arguments, so its config is "
            "unknown: save a module loaded from a lit-genai fit run, or pass config={'class_path': ..., "
            "'init_args': {...}}"
        )
    config = {"class_path": str(config["class_path"]), "init_args": dict(config.get("init_args") or {})}
    _check_config(net, config)
    return name, net, config


def _run_folder(module: LightningModule) -> Optional[Path]:
    """The run folder of a module ``lit_genai.api.load`` read (``runs/<name>`` of its checkpoint)."""
    path = getattr(module, "checkpoint_path", None)
    if path is None:
        return None
    ckpt = Path(path)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def _run_model_config(module: LightningModule) -> dict[str, Any]:
    """The ``model.init_args`` of the run's ``config.yaml`` (what ``lit-genai fit`` saved), or {}."""
    from lit_genai.api.load import CONFIG_FILE, read_config

    run = _run_folder(module)
    config = read_config(run / CONFIG_FILE) if run is not None else None
    return dict((config or {}).get("model", {}).get("init_args") or {})


def _check_config(net: nn.Module, config: dict[str, Any]) -> None:
    """The config rebuilds a network with ``net``'s tensors (built on the meta device: no memory)."""
    cls = _network_class(config["class_path"], "save_pretrained")
    try:
        try:
            with torch.device("meta"):
                rebuilt = cls(**config["init_args"])
        except (RuntimeError, NotImplementedError):  # an init that reads tensor values: build it for real
            rebuilt = cls(**config["init_args"])
    except (TypeError, ValueError, ConfigError) as error:
        raise ConfigError(f"save_pretrained: its config does not build a {cls.__name__} ({error})") from None
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    if shapes != {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}:
        raise ConfigError(
            f"save_pretrained: the config builds a {cls.__name__} whose tensors differ from the network's; "
            "pass the config the network was built with"
        )


def describe(module: LightningModule, name: str) -> dict[str, Any]:
    """What the model is, for ``config.json``'s ``model`` and the card: the module's class, network,
    modality, plain hyperparameters, sampling settings and media decoder."""
    hparams = {
        k: v
        for k, v in module.hparams.items()
        if not k.startswith("_")
        and not _is_config(v)
        and k not in ("optimizer", "lr_scheduler")
        and _jsonable(v)
    }
    info: dict[str, Any] = {
        "class_path": _class_path(module),
        "network": name,
        "modality": getattr(module, "modality", None),
        "hyperparameters": hparams,
    }
    if callable(getattr(module, "sampling_settings", None)):
        info["sampling"] = {k: v for k, v in module.sampling_settings().items() if _jsonable(v)}
    decoder = getattr(module, "media_decoder", None)  # set by lit_genai.api.load
    if decoder is not None:
        from lit_genai.data.decoders import decoder_config

        info["decoder"] = decoder_config(decoder)
    return info


def read_test_results(metrics: TestResults) -> Optional[dict[str, Any]]:
    """A run's test results: the ``*.test.json`` path ``lit-genai test`` wrote, its loaded dict, or a
    plain ``{metric: value}`` dict (no protocol); None when none are given."""
    if metrics is None:
        return None
    if isinstance(metrics, Mapping):
        results = dict(metrics)
    else:
        path = Path(metrics)
        try:
            results = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(
                f"metrics={path}: not a readable test JSON ({type(error).__name__}); give the .test.json "
                "lit-genai test wrote next to the checkpoint"
            ) from None
    if "metrics" not in results:  # a bare {name: value}
        results = {"metrics": results}
    return results


def _test_json(module_or_net: nn.Module) -> Optional[Path]:
    """The ``<checkpoint>.test.json`` beside the checkpoint a loaded module came from, if written."""
    path = getattr(module_or_net, "checkpoint_path", None)
    found = Path(path).with_suffix(".test.json") if path is not None else None
    return found if found is not None and found.is_file() else None


# ---------------------------------------------------------------------- the model card


def _table(rows: Mapping[str, Any]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"  # float32 metrics: 0.998, not 0.9980000257492065
        return value if isinstance(value, str) else json.dumps(value)

    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | `{cell(v)}` |" for k, v in rows.items()]
    return "\n".join(lines)


def _data_line(module: LightningModule) -> str:
    parts = []
    if getattr(module, "sample_shape", None) is not None:
        parts.append(f"samples of shape {tuple(module.sample_shape)}")
    if getattr(module, "vocab_size", None) is not None:
        parts.append(f"{module.vocab_size} token ids")
    if getattr(module, "vocabulary", None):
        parts.append(f"a vocabulary of {len(module.vocabulary)} symbols")
    classes = int(getattr(module, "num_classes", 0) or 0)
    names = getattr(module, "class_names", None)
    if classes:
        shown = f": {', '.join(map(str, names[:10]))}{', ...' if len(names) > 10 else ''}" if names else ""
        parts.append(f"{classes} classes (label {classes} is the null label of guidance){shown}")
    return "; ".join(parts) or "unknown"


def model_card(
    module_or_net: nn.Module,
    *,
    metrics: TestResults = None,
    usage: Optional[str] = None,
    network: Optional[str] = None,
    config: Optional[Mapping[str, Any]] = None,
) -> Any:
    """The ``huggingface_hub.ModelCard`` of a module (or a bare network): Hub metadata, what the model
    is, its test results (``read_test_results``) and how to use it (``usage``: markdown; default the
    ``from_pretrained`` of this file). The network's config is shown when known (``network_of``)."""
    name, net, net_config = network_of(module_or_net, network, config, required=False)
    return _card(module_or_net, name, net, net_config, metrics, usage)


def _card(
    module_or_net: nn.Module,
    name: Optional[str],
    net: nn.Module,
    net_config: Optional[dict[str, Any]],
    metrics: TestResults,
    usage: Optional[str],
) -> Any:
    hub = _import("huggingface_hub")
    is_module = isinstance(module_or_net, LightningModule)
    parameters = sum(p.numel() for p in net.parameters())
    class_path = net_config["class_path"] if net_config is not None else _class_path(net)
    tags = ["lit-genai", "pytorch"]
    pipeline_tag = None
    lines = []
    if is_module:
        module = module_or_net
        info = describe(module, name)
        modality = info["modality"]
        tags += [type(module).__name__.lower(), type(net).__name__.lower(), *([modality] if modality else [])]
        if not getattr(module, "num_classes", 0):
            pipeline_tag = PIPELINE_TAGS.get(modality)
        lines += [
            f"# {type(module).__name__} with a {type(net).__name__}",
            "",
            f"A generative model of {MEDIA.get(modality, 'data')} trained with lit_genai (Lightning).",
            "",
            "## Model",
            "",
            f"- paradigm: `{info['class_path']}` (its network `{name}`)",
            f"- network: `{class_path}`, {parameters:,} parameters",
            f"- data: {_data_line(module)}",
        ]
        if "decoder" in info:
            lines.append(f"- media decoder: `{info['decoder']['class_path'].rpartition('.')[2]}`")
        lines += ["", "Hyperparameters:", "", _table(info["hyperparameters"])]
        if info.get("sampling"):
            lines += ["", "Sampling settings (defaults of `sample()`):", "", _table(info["sampling"])]
    else:
        tags.append(type(net).__name__.lower())
        lines += [
            f"# {type(net).__name__}",
            "",
            f"- network: `{class_path}`, {parameters:,} parameters",
        ]
    if net_config is not None:
        lines += ["", "Network config (`init_args`):", "", _table(net_config["init_args"])]
    results = read_test_results(metrics if metrics is not None else _test_json(module_or_net))
    lines += ["", "## Evaluation", ""]
    if results is None:
        lines.append("No test results were given (`lit-genai test` writes them next to the checkpoint).")
    else:
        if results.get("checkpoint"):
            lines += [f"`lit-genai test` of `{results['checkpoint']}`:", ""]
        lines.append(_table({k.removeprefix("test/"): v for k, v in sorted(results["metrics"].items())}))
        for key in ("protocol", "likelihood_protocol"):
            if results.get(key):
                lines += ["", f"{key.replace('_', ' ').capitalize()}:", "", "```json"]
                lines += [json.dumps(results[key], indent=2, sort_keys=True), "```"]
    default_usage = (
        "```python\nfrom lit_genai.export.hub import from_pretrained\n\n"
        'net = from_pretrained("<this folder or user/repo>")  # the network, in eval mode\n```'
    )
    lines += ["", "## Use", "", usage or default_usage, ""]
    data = hub.ModelCardData(library_name=LIBRARY, tags=sorted(set(tags)), pipeline_tag=pipeline_tag)
    return hub.ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


# ---------------------------------------------------------------------- save and load


def save_pretrained(
    module_or_net: nn.Module,
    folder: Union[str, Path],
    *,
    metrics: TestResults = None,
    network: Optional[str] = None,
    config: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``README.md`` of a network (module docstring).

    Args:
        module_or_net: a loaded module (``lit_genai.api.load``: EMA weights in) or a bare network.
        folder: the folder to write (created; files of the same names are replaced).
        metrics: the run's test results for the card: the ``*.test.json`` path, or its dict
            (default: the one beside the checkpoint of a module from ``lit_genai.api.load``).
        network: the module's network to save (default: the one it samples with, ``ema_target``).
        config: the network's ``{"class_path", "init_args"}`` when neither the module's
            hyperparameters nor the network's attributes hold it.

    Returns:
        ``folder``.
    """
    safetensors_torch = _import("safetensors.torch")
    name, net, net_config = network_of(module_or_net, network, config)
    card = _card(module_or_net, name, net, net_config, metrics, None)
    payload: dict[str, Any] = {"library_name": LIBRARY, **net_config}
    if isinstance(module_or_net, LightningModule):
        payload["model"] = describe(module_or_net, name)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).write_text(json.dumps(payload, indent=2) + "\n")
    on_cpu = all(t.device.type == "cpu" for t in net.state_dict().values())
    net = net if on_cpu else copy.deepcopy(net).cpu()  # a copy: the caller's module stays where it is
    # save_model, not save_file: it writes a tied weight (GPT's lm_head = wte) once
    safetensors_torch.save_model(net, str(out / WEIGHTS), metadata={"format": "pt"})
    card.save(out / CARD)
    return out


def _local_folder(path_or_repo: Union[str, Path], revision: Optional[str]) -> Path:
    """A local folder as it is; a Hub repository id downloaded (or found in the cache) first."""
    folder = Path(path_or_repo).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists() or str(path_or_repo).count("/") != 1:
        raise ConfigError(f"{path_or_repo}: not a folder (nor a Hub repository id user/name)")
    hub = _import("huggingface_hub")
    try:
        return Path(
            hub.snapshot_download(
                str(path_or_repo), revision=revision, allow_patterns=[CONFIG, WEIGHTS, CARD]
            )
        )
    except (OSError, ValueError, hub.errors.EntryNotFoundError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(
            f"{path_or_repo}: no such local folder, and the Hub repository could not be read ({first})"
        ) from None


def from_pretrained(
    path_or_repo: Union[str, Path],
    *,
    revision: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
) -> nn.Module:
    """The network of a ``save_pretrained`` folder (or Hub repository ``user/name``), in eval mode,
    without gradients, on ``device``. Only classes of lit_genai (or already imported) are built."""
    folder = _local_folder(path_or_repo, revision)
    where = str(path_or_repo)
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(
            f"{where}: no readable {CONFIG} ({type(error).__name__}); give a folder save_pretrained wrote"
        ) from None
    if config.get("library_name") != LIBRARY or "class_path" not in config:
        raise ConfigError(
            f"{where}: its {CONFIG} is not lit_genai's (no library_name lit_genai and class_path)"
        )
    cls = _network_class(str(config["class_path"]), where)
    try:
        net = cls(**dict(config.get("init_args") or {}))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: cannot build its {cls.__name__} ({error})") from None
    if not (folder / WEIGHTS).is_file():
        raise ConfigError(f"{where}: no {WEIGHTS}; give a folder save_pretrained wrote")
    safetensors_torch = _import("safetensors.torch")
    try:
        safetensors_torch.load_model(net, str(folder / WEIGHTS), strict=True)
    except Exception as error:  # safetensors raises RuntimeError or its own SafetensorError
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ConfigError(f"{where}: its weights do not fit its {cls.__name__} ({first})") from None
    return net.to(device).eval().requires_grad_(False)
