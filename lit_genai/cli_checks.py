"""Checks of the command line's input, so that bad input ends in one line (docs/architecture.md,
"Errors"):

- ``LitGenAIParser``: a parser error (missing config file, wrong type, unknown class path or key)
  prints ``lit-genai: error: <key>: <reason>`` and a pointer to ``--help`` instead of the whole usage;
  ``short_parser_error`` reduces jsonargparse's nested explanation to that one line.
- ``check_checkpoint``: a ``--ckpt_path`` file that is missing, not a checkpoint, truncated or
  refused by safe loading raises one ``LitGenAIError`` line naming the file and the problem, before
  Lightning would end in a ``PytorchStreamReader`` or ``KeyError`` traceback.
- ``check_learning_rates``: an ``lr`` that is NaN, infinite, zero or negative is one ``ConfigError``
  line (``model.optimizer.lr: must be a finite positive number (e.g. 1e-3), given nan``) before
  anything is built; the parser says the same of ``nan`` and ``inf`` typed as words (strings to
  YAML), whose reason jsonargparse's explanation buried.
- ``check_writable``: every folder the command will write into (``folders_to_write``: the run
  folder, checkpoints, predict's output, the metric feature cache, the data's downloads and caches)
  is checked right after instantiation; one that cannot be made or written is one ``LitGenAIError``
  line naming it, why and the option that moves it, instead of a ``NotADirectoryError`` or
  ``PermissionError`` traceback from a callback, maybe hours into training.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any, NoReturn, Optional, Union

import torch
from lightning.pytorch.cli import LightningArgumentParser

from lit_genai import paradigm
from lit_genai.callbacks.evaluation import Evaluation
from lit_genai.callbacks.samples import SampleWriter
from lit_genai.data.checks import Folder
from lit_genai.errors import ConfigError, LitGenAIError
from lit_genai.metrics.cache import default_cache_dir

# jsonargparse's explanation of a failed value: which lines only say how it searched.
_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes: ",
    "Errors:",
    "Given value type: ",
    "Given value: ",
    "Expected a <class 'NoneType'>",
)
_NOT_A_PATH = re.compile(r"Expected a path but .* either not accessible or invalid")
_KEY_LINE = re.compile(r'Parser key "([^"]+)":(.*)')
# A key at the end of another type's explanation: '... expects a function or a callable class: Parser
# key "lr":' (an optimiser's init argument); its reason follows on the lines below.
_TRAILING_KEY = re.compile(r'.*: Parser key "([^"]+)":')
_NESTED_VALUE = re.compile(r"NestedArg\(key='[^']*', val='(.*)'\)")
_CLASS_LINE = re.compile(r"Problem with given class_path '([^']+)':(.*)")
_IMPORT_FAILED = re.compile(r"module '[^']+' has no attribute|No module named|No module or class|not found")
_MAX_MESSAGE = 300


def short_parser_error(message: str) -> str:
    """jsonargparse's error ``message`` (often a tree of why each candidate type failed) in one line.

    Keeps the key path and the innermost reason, e.g. ``model.net: import path 'lit_genai.nn.Unet'
    not found (module 'lit_genai.nn' has no attribute 'Unet')`` or ``trainer.max_epochs: expected
    int, given abc``.
    """
    lines = [line for line in message.splitlines() if line.strip()]
    given = next((ln.split("Given value: ", 1)[1] for ln in reversed(lines) if "Given value: " in ln), None)
    context: list[tuple[int, str, str]] = []  # (indent, "key" | "class", name) enclosing the line
    leaf = None
    for line in lines:
        text, indent = line.strip(), len(line) - len(line.lstrip())
        text = text[2:] if text.startswith("- ") else text  # "- ": one of several candidates' reasons
        while context and context[-1][0] >= indent:
            context.pop()
        for kind, pattern in (("key", _KEY_LINE), ("class", _CLASS_LINE)):
            match = pattern.fullmatch(text)
            if match:
                context.append((indent, kind, match[1]))
                text = match[2].strip()  # a reason on the same line: 'Parser key "config": File ...'
                break
        else:
            match = _TRAILING_KEY.fullmatch(text)
            if match:
                context.append((indent, "key", match[1]))
                text = ""
        if text and not text.startswith(_NOISE) and not _NOT_A_PATH.fullmatch(text):
            leaf = text
            break
    if leaf is None:
        return _clip(" ".join(line.strip() for line in lines[:2]))
    keys = ".".join(name for _, kind, name in context if kind == "key")
    classes = [name for _, kind, name in context if kind == "class"]
    if keys.rsplit(".", 1)[-1] in LEARNING_RATES:  # "nan" and "inf" are strings to YAML, not floats
        return _clip(f"{keys}: {_MUST_BE_A_RATE}, given {_given_value(lines)}")
    leaf = re.sub(r"<class '([\w.]+)'>", r"\1", leaf).replace("Expected a ", "expected ")
    leaf = leaf.replace(". Got value: ", ", given ")
    if classes and _IMPORT_FAILED.search(leaf):
        reason = f"import path '{classes[-1]}' not found ({leaf})"
    elif given and given not in leaf and not given.startswith(("NestedArg(", "{", "Namespace(")):
        reason = f"{leaf}, given {given}"
    else:
        reason = leaf
    return _clip(f"{keys}: {reason}" if keys else reason)


def _given_value(lines: list[str]) -> str:
    """The value the innermost reason was given, as typed (``nan`` of ``Given value: nan. Got ...``)."""
    text = next((ln.split("Given value: ", 1)[1] for ln in lines if "Given value: " in ln), "")
    nested = _NESTED_VALUE.fullmatch(text)
    return nested[1] if nested else text.split(". Got value: ", 1)[0]


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


class LitGenAIParser(LightningArgumentParser):
    """A parser whose errors are two lines (the reason and where help is), not the whole usage."""

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        if (
            not self.exit_on_error
            or os.environ.get("JSONARGPARSE_DEBUG")
            or callable(getattr(self, "_error_handler", None))
        ):
            super().error(message, ex)  # raises: a parser used inside another, or debugging
        self._logger.error(message)
        parser = getattr(ex, "subcommand_parser", None) or self
        command = " ".join(["lit-genai", *parser.prog.replace(" [options]", "").split()[1:]])
        sys.stderr.write(f"lit-genai: error: {short_parser_error(message)}\n")
        sys.stderr.write(f"Run '{command} --help' for the options.\n")
        self.exit(2)


# ---------------------------------------------------------------------- --ckpt_path checks

_ZIP_MAGIC = b"PK\x03\x04"


def check_checkpoint(path: str, *, weights_only: bool = True, resume: bool = False) -> dict[str, Any]:
    """Open ``path`` as a Lightning checkpoint cheaply, or raise one ``LitGenAIError`` line saying why not.

    The tensors are memory-mapped, not read (``mmap=True``), so this costs the pickled metadata
    only. Raised for: a missing file, a file that is not a zip archive (what ``torch.save`` writes),
    a truncated or corrupt one (an interrupted save), objects ``weights_only`` loading refuses, a
    torch file without ``state_dict`` (e.g. a plain state dict) and, with ``resume`` (``fit``), a
    checkpoint without optimiser states (saved with ``save_weights_only``). Returns the checkpoint.
    """
    where = f"--ckpt_path {path}"
    file = Path(path)
    if not file.exists():
        raise LitGenAIError(f"{where}: no such file; pass a checkpoint path or --ckpt_path last")
    with open(file, "rb") as f:
        magic = f.read(len(_ZIP_MAGIC))
    if not zipfile.is_zipfile(file):
        if magic == _ZIP_MAGIC:
            raise LitGenAIError(
                f"{where}: truncated or corrupt checkpoint (its zip directory is missing; an interrupted "
                "save?): pass another checkpoint, e.g. an earlier or best one"
            )
        raise LitGenAIError(f"{where}: not a checkpoint (not the zip archive torch.save writes)")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=weights_only, mmap=True)
    except pickle.UnpicklingError as error:
        if weights_only and "Weights only load failed" in str(error):
            refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
            what = f" ({refused[1]})" if refused else ""
            raise LitGenAIError(
                f"{where}: holds objects that safe loading refuses{what}; only if you trust the file, "
                "pass --weights_only false"
            ) from None
        raise LitGenAIError(f"{where}: corrupt checkpoint ({_first_line(error)})") from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise LitGenAIError(f"{where}: corrupt checkpoint ({_first_line(error)})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        keys = list(checkpoint)[:4] if isinstance(checkpoint, dict) else []
        holds = f"keys {', '.join(map(str, keys))}" if keys else type(checkpoint).__name__
        raise LitGenAIError(
            f"{where}: a torch file, not a Lightning checkpoint (no 'state_dict' key; it holds {holds}): "
            "pass a checkpoint saved by lit-genai fit, not a plain state dict"
        )
    if resume and "optimizer_states" not in checkpoint:
        raise LitGenAIError(
            f"{where}: holds the weights only (saved with save_weights_only), so fit cannot resume from "
            "it: use it with test or predict, or pass a full checkpoint"
        )
    return checkpoint


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return _clip(lines[0]) if lines else type(error).__name__


def is_checkpoint_file(ckpt_path: Optional[str]) -> bool:
    """Whether ``--ckpt_path`` names a local file to check (not a name Lightning resolves, a URL or a
    folder of a sharded checkpoint)."""
    if not ckpt_path:
        return False
    text = str(ckpt_path)
    if text in ("last", "best", "hpc") or text.lower().split(":", 1)[0] == "registry" or "://" in text:
        return False
    return not Path(text).is_dir()


# ---------------------------------------------------------------------- learning rates

LEARNING_RATES = frozenset({"lr"})  # init argument names that are a learning rate
_MUST_BE_A_RATE = "must be a finite positive number (e.g. 1e-3)"


def check_learning_rates(model_config: Any, key: str = "model") -> None:
    """Raise one ``ConfigError`` line for a learning rate under ``model_config`` (the parsed ``model``
    group: an optimiser's ``init_args.lr``, a GAN's two, a module's own ``lr``) that is not a finite
    positive number, before anything is built.

    torch's optimisers refuse a negative or NaN rate only when ``fit`` builds them, in a traceback,
    and take ``inf``, which makes every weight NaN at the first step. The key is written as the
    parser writes it (``model.optimizer.lr``, no ``init_args``; the command line takes both).
    """
    items = model_config.items() if hasattr(model_config, "items") else ()
    for name, value in items:
        path = ".".join(part for part in f"{key}.{name}".split(".") if part != "init_args")
        if path.rsplit(".", 1)[-1] not in LEARNING_RATES or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{path}: {_MUST_BE_A_RATE}, given {value}")


# ---------------------------------------------------------------------- folders a run writes


def unwritable_reason(folder: Union[str, Path]) -> Optional[str]:
    """Why this process cannot create or write ``folder``, or None when it can.

    A folder that does not exist yet is judged by its nearest existing parent, where it would be
    made. ``os.access`` answers for this user without writing anything (as root it passes
    permission bits but not a read-only file system).
    """
    path = Path(folder).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())  # "/" exists
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable by this user"
    return None


def folders_to_write(
    subcommand: Optional[str], trainer: Any, model: Any, datamodule: Any, ckpt_path: Optional[str] = None
) -> list[Folder]:
    """The local folders ``subcommand`` will write into: the run folder, the loggers', the checkpoints'
    (fit), predict's output (``SampleWriter``), the Evaluation callback's feature cache and, at test,
    the checkpoint's folder (``test.json``), and the data module's (``write_folders()``: downloads,
    token and audio caches still to be written)."""
    if subcommand is None:  # instantiated without running (run=False): nothing is written
        return []
    run = Path(trainer.default_root_dir)
    folders = [
        Folder("the run folder (trainer.default_root_dir)", run, anywhere("--trainer.default_root_dir"))
    ]
    for logger in trainer.loggers:
        save_dir = getattr(logger, "save_dir", None)
        if save_dir and "://" not in str(save_dir):  # remote folders are the logger's business
            option = "trainer.logger.init_args.save_dir"
            folders.append(Folder(f"the logger's folder ({option})", Path(save_dir), anywhere(f"--{option}")))
    for callback in trainer.checkpoint_callbacks if subcommand == "fit" else []:
        dirpath = getattr(callback, "dirpath", None)
        if dirpath and "://" not in str(dirpath):
            what, fix = "the checkpoint folder (checkpoint.dirpath)", anywhere("--checkpoint.dirpath")
            folders.append(Folder(what, Path(dirpath), fix))
    for callback in trainer.callbacks:
        if subcommand == "predict" and isinstance(callback, SampleWriter):
            what, fix = "the predict output folder (writer.output_dir)", anywhere("--writer.output_dir")
            folders.append(Folder(what, callback.resolve_dir(trainer), fix))
        if isinstance(callback, Evaluation) and _evaluates(callback, subcommand, model):
            cache = Path(callback.cache_dir) if callback.cache_dir is not None else default_cache_dir()
            fix = anywhere("--evaluation.cache_dir") + " (or set LIT_GENAI_CACHE)"
            folders.append(Folder("the metric feature cache (evaluation.cache_dir)", cache, fix))
        if isinstance(callback, Evaluation) and subcommand == "test" and is_checkpoint_file(ckpt_path):
            what = "the checkpoint's folder (test results are written beside --ckpt_path)"
            fix = "copy the checkpoint into a writable folder and pass that copy"
            folders.append(Folder(what, Path(ckpt_path).parent, fix))  # Evaluation.on_test_end
    data_folders = getattr(datamodule, "write_folders", None)
    if callable(data_folders):
        folders += data_folders()
    return folders


def anywhere(option: str) -> str:
    """What to do about an unwritable folder that ``option`` moves."""
    return f"pass {option} <a writable folder>"


def _evaluates(evaluation: Evaluation, subcommand: str, model: Any) -> bool:
    """Whether ``evaluation`` computes (and caches) quality metrics in this command."""
    if not (paradigm.is_generative(model) and model.modality == "image"):
        return False  # it skips other media (Evaluation.evaluate)
    if subcommand == "test":
        return evaluation.at_test
    return subcommand in ("fit", "validate") and evaluation.every_n_epochs > 0


def check_writable(
    subcommand: Optional[str], trainer: Any, model: Any, datamodule: Any, ckpt_path: Optional[str] = None
) -> None:
    """Raise one ``LitGenAIError`` line for the first folder of ``folders_to_write`` that cannot be
    written, naming it, why, and the option that moves it; called right after instantiation, before
    anything is read, trained or written (a 40-line ``NotADirectoryError`` / ``PermissionError``
    traceback from a callback or a download otherwise, possibly after hours of training)."""
    for folder in folders_to_write(subcommand, trainer, model, datamodule, ckpt_path):
        reason = unwritable_reason(folder.path)
        if reason is not None:
            raise LitGenAIError(f"{folder.what} {folder.path} cannot be written ({reason}): {folder.fix}")


# ---------------------------------------------------------------------- --ckpt_path last / hpc


def last_checkpoint(dirpath: str) -> str:
    """``--ckpt_path last``: the newest ``last*.ckpt`` in the checkpoint folder; one line when none."""
    candidates = sorted(Path(dirpath).glob("last*.ckpt"), key=os.path.getmtime)
    if not candidates:
        raise LitGenAIError(
            f"--ckpt_path last: no last.ckpt in {dirpath}; train first or pass a checkpoint path"
        )
    return str(candidates[-1])


# --ckpt_path hpc, the checkpoint Lightning writes when SLURM requeues a job. Under SLURM,
# Lightning (2.6, ``SLURMEnvironment(auto_requeue=True)``, the default) catches the
# signal SLURM sends before a job's time limit (SIGUSR1, ``#SBATCH --signal=SIGUSR1@90``), saves
# ``<trainer.default_root_dir>/hpc_ckpt_<n>.ckpt`` (n one more than the highest there) and requeues
# the job with ``scontrol requeue``. The requeued job runs the same command; without ``--ckpt_path``
# Lightning resumes from the highest n by itself, and ``--ckpt_path hpc`` asks for that file
# explicitly. ``lit-genai`` resolves ``hpc`` as it resolves ``last`` and ``best``, in the run folder
# (``runs/<experiment>`` unless ``trainer.default_root_dir`` is set), so the file gets the same
# one-line checks (missing, truncated, another model's) instead of Lightning's ``ValueError``.
_HPC_NAME = re.compile(r"hpc_ckpt_(\d+)\.ckpt")


def hpc_checkpoint(root: str) -> str:
    """The newest ``hpc_ckpt_<n>.ckpt`` in the run folder ``root``: the highest n, as Lightning's
    ``_CheckpointConnector._hpc_resume_path`` picks it; one ``LitGenAIError`` line when there is none."""
    found = {}
    for path in Path(root).glob("hpc_ckpt_*.ckpt"):
        match = _HPC_NAME.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    if not found:
        raise LitGenAIError(
            f"--ckpt_path hpc: no hpc_ckpt_<n>.ckpt in {root} (Lightning writes one when SLURM "
            "requeues the job); pass last or a checkpoint path"
        )
    return str(found[max(found)])
