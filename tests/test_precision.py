"""Mixed precision on the CPU for every paradigm: ``--trainer.precision bf16-mixed`` trains to finite
losses and weights, and ``16-mixed``, which Lightning does not run on a CPU, becomes bf16-mixed.

One row per module of tests/test_contract.py (``GENERATIVE`` and ``AUTOENCODERS``), fed the batch
format it takes (tests/ddp_paradigms_script.py ``BATCHES``), fits ``STEPS`` batches under torch's
CPU autocast (bfloat16); the whole matrix takes seconds.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from ddp_paradigms_script import BATCHES
from helpers import quiet_trainer
from lightning.pytorch import Callback
from test_contract import AUTOENCODERS, GENERATIVE
from torch.utils.data import DataLoader, TensorDataset

STEPS, B = 2, 4


class Losses(Callback):
    """Every training step's loss: what ``training_step`` returned, or (manual optimisation, the
    GAN) the ``train/`` values it logged."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(outputs, dict) and "loss" in outputs:
            self.values.append(float(outputs["loss"]))
        else:
            self.values += [float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")]


def _module(row: str, request) -> torch.nn.Module:
    torch.manual_seed(0)
    if row in AUTOENCODERS:
        return AUTOENCODERS[row][1]()
    latent = GENERATIVE[row][0][2]  # the row's (module, networks, latent?) key
    ae = request.getfixturevalue("ae_checkpoint") if latent else None
    return GENERATIVE[row][1](ae)[0]


def _fit(row: str, request, tmp_path, precision: str):
    module = _module(row, request)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    data = TensorDataset(*BATCHES[row](STEPS * B, torch.Generator().manual_seed(1)))
    losses = Losses()
    trainer = quiet_trainer(
        tmp_path, [losses], accelerator="cpu", precision=precision, max_epochs=1, limit_val_batches=0
    )
    dtypes: set[torch.dtype] = set()  # of every layer's output: bfloat16 where autocast ran it so
    record = lambda layer, inputs, output: (
        dtypes.add(output.dtype) if isinstance(output, torch.Tensor) else None
    )
    with torch.nn.modules.module.register_module_forward_hook(record):
        trainer.fit(module, DataLoader(data, batch_size=B))
    assert torch.bfloat16 in dtypes, dtypes
    return module, before, trainer, losses.values


@pytest.mark.parametrize("row", list(BATCHES))
def test_bf16_mixed_trains_every_paradigm_to_finite_losses_and_weights(row, request, tmp_path):
    module, before, trainer, losses = _fit(row, request, tmp_path, "bf16-mixed")
    assert len(losses) >= STEPS and all(math.isfinite(v) for v in losses), losses
    params = dict(module.named_parameters())
    assert all(torch.isfinite(p).all() for p in params.values())
    assert all(p.dtype == torch.float32 for p in params.values())  # autocast keeps float32 weights
    assert any(not torch.equal(params[n], before[n]) for n in before), "nothing was trained"


def test_16_mixed_becomes_bf16_mixed_on_the_cpu(request, tmp_path):
    with pytest.warns(
        UserWarning, match="AMP with fp16 is not supported on CPU. Using `precision='bf16-mixed'`"
    ):
        _, _, trainer, losses = _fit("gpt-text", request, tmp_path, "16-mixed")
    assert trainer.precision == "bf16-mixed"
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses)
