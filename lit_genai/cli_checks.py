"""Checks of the command line's input, so that bad input ends in one line (docs/architecture.md,
"Errors"):

- ``LitGenAIParser``: a parser error (missing config file, wrong type, unknown class path or key)
  prints ``lit-genai: error: <key>: <reason>`` and a pointer to ``--help`` instead of the whole usage;
  ``short_parser_error`` reduces jsonargparse's nested explanation to that one line.
- ``check_checkpoint``: a ``--ckpt_path`` file that is missing, not a checkpoint, truncated or
  refused by safe loading raises one ``LitGenAIError`` line naming the file and the problem, before
  Lightning would end in a ``PytorchStreamReader`` or ``KeyError`` traceback.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any, NoReturn, Optional

import torch
from lightning.pytorch.cli import LightningArgumentParser

from lit_genai.errors import LitGenAIError

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
        if text and not text.startswith(_NOISE) and not _NOT_A_PATH.fullmatch(text):
            leaf = text
            break
    if leaf is None:
        return _clip(" ".join(line.strip() for line in lines[:2]))
    keys = ".".join(name for _, kind, name in context if kind == "key")
    classes = [name for _, kind, name in context if kind == "class"]
    leaf = re.sub(r"<class '([\w.]+)'>", r"\1", leaf).replace("Expected a ", "expected ")
    leaf = leaf.replace(". Got value: ", ", given ")
    if classes and _IMPORT_FAILED.search(leaf):
        reason = f"import path '{classes[-1]}' not found ({leaf})"
    elif given and given not in leaf and not given.startswith(("NestedArg(", "{", "Namespace(")):
        reason = f"{leaf}, given {given}"
    else:
        reason = leaf
    return _clip(f"{keys}: {reason}" if keys else reason)


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
