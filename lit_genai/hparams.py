"""Hyperparameters that reload safely: config values only, never Python objects.

Under LightningCLI a module's hyperparameters are the plain config (``class_path`` + ``init_args``
dicts), which ``load_from_checkpoint`` can rebuild and ``torch.load(weights_only=True)`` can read
(docs/architecture.md, "Checkpoints"). Built from Python, the same arguments are objects (a
network, an optimiser class, a lambda): pickling them would make checkpoints unsafe or unloadable,
and a network's weights are in the state dict already, so they are dropped.

The ``sampling`` init argument (a paradigm's ``SamplingSettings``) is never saved: it configures a use
of the weights, not the model, so a checkpoint neither carries nor is compared on it
(docs/architecture.md, "Sampling settings" and "Checkpoints").
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence

from lightning.pytorch import LightningModule

SAMPLING = "sampling"  # the init argument of a module's inference-time settings, never saved


def save_plain_hyperparameters(
    module: LightningModule, objects: Sequence[str], ignore: Sequence[str] = ()
) -> None:
    """``module.save_hyperparameters(ignore=ignore)`` from the caller's ``__init__`` (``sampling`` is
    always ignored), then drop each of ``objects`` (init argument names) whose value is not plain
    config (a dict or a string)."""
    frame = inspect.currentframe().f_back  # the caller's __init__, whose arguments are saved
    with warnings.catch_warnings():  # networks as modules: their weights are in the state dict already
        warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
        module.save_hyperparameters(ignore=[*ignore, SAMPLING], frame=frame)
    for name in objects:
        value = module.hparams.get(name)
        if value is not None and not isinstance(value, (dict, str)):
            module.hparams.pop(name)
            module._hparams_initial.pop(name, None)
