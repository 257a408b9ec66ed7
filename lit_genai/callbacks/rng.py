"""Global random-number-generator state in checkpoints (docs/architecture.md, "Checkpoints").

Lightning 2.6 checkpoints hold weights, optimisers, schedulers, loops and callback states, but not
the RNG state, so a resumed run shuffles its data and draws its noise from whatever state the new
process starts in. This callback saves the torch (CPU), CUDA (every device), NumPy and Python states
(``lightning.fabric.utilities.seed._collect_rng_states``) as plain tensors and lists, loadable with
``torch.load(weights_only=True)``, and restores them when the checkpoint is loaded.

When. The state saved is the one at the moment the checkpoint is written. On ``fit(ckpt_path=...)``
Lightning restores callback states right after reading the checkpoint: before
``configure_optimizers``, ``on_fit_start``, the sanity check (skipped when resuming, and run inside
``isolate_rng`` otherwise) and before the training DataLoader's iterator is created (its shuffle
seed and worker base seed are drawn from the torch RNG then). So the restored state is the one the
next epoch's shuffle and the next batch use.

Exactness. Resuming from an epoch-boundary checkpoint (``last.ckpt`` written after an epoch's
validation or at its end) continues exactly as an uninterrupted run. A mid-epoch checkpoint (from
``max_steps``, ``val_check_interval`` or a Timer) does not: Lightning 2.6 restarts a plain
DataLoader with a fresh shuffle and runs only the rest of the epoch's batch count (it warns about
it); exactness there needs a resumable loader (``state_dict``/``load_state_dict``, e.g. torchdata's
``StatefulDataLoader``).

DDP: rank 0 writes the checkpoint and every rank restores rank 0's state. Lightning's
``seed_everything`` seeds all ranks alike, so that is every rank's state as long as the ranks draw
the same amount of randomness (the GAN module draws its noise so that they do).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn


class RNGState(Callback):
    """Save the global RNG states (torch, CUDA, NumPy, Python) in checkpoints and restore them on load.

    Args:
        enabled: Turn the callback off without removing it from the config.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    @property
    def state_key(self) -> str:
        return "RNGState"

    def state_dict(self) -> dict[str, Any]:
        if not self.enabled:
            return {}
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        version, python_state, gauss = states["python"]
        key, numpy_state, pos, has_gauss, cached_gaussian = states["numpy"]
        return {
            "torch": states["torch"],
            "torch.cuda": list(states.get("torch.cuda", [])),
            "numpy": {
                "key": key,
                "state": torch.from_numpy(numpy_state.astype(np.int64)),  # (624,) uint32 words
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached_gaussian),
            },
            "python": [version, list(python_state), gauss],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self.enabled or not state_dict:
            return
        torch.set_rng_state(state_dict["torch"])
        cuda = state_dict.get("torch.cuda", [])
        if cuda and torch.cuda.is_available():
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
            else:
                rank_zero_warn(
                    f"RNGState: the checkpoint holds CUDA RNG states of {len(cuda)} devices but "
                    f"{torch.cuda.device_count()} are visible; CUDA RNG states not restored."
                )
        numpy = state_dict["numpy"]
        np.random.set_state(
            (
                numpy["key"],
                numpy["state"].numpy().astype(np.uint32),
                numpy["pos"],
                numpy["has_gauss"],
                numpy["cached_gaussian"],
            )
        )
        version, python_state, gauss = state_dict["python"]
        random.setstate((version, tuple(python_state), gauss))
