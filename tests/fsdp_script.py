"""Lightning's FSDP on two CPU (gloo) ranks, for tests/test_fsdp.py.

Lightning 2.6 refuses FSDP without a GPU: its accelerator connector raises "The strategy `fsdp`
requires a GPU accelerator" when ``type(strategy) is FSDPStrategy`` and the accelerator is not
CUDA; and torch's ``FullyShardedDataParallel`` raises "FSDP needs a non-CPU accelerator device"
unless ``device_id`` names the CPU, which Lightning passes as ``root_device.index`` (None on the
CPU). ``CPUFSDP`` is Lightning's ``FSDPStrategy`` with those two things changed, so the rest
(wrapping with the auto-wrap policy, ``use_orig_params``, the precision plugin, full state dicts,
the redirected steps) is Lightning's own code on gloo.

``run(out, ae)`` forks two ranks (``torch.multiprocessing``, start method ``fork``: they inherit
this process's imports) that join one gloo process group as an externally launched job does
(``MASTER_ADDR``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...: Lightning then launches nothing and each
Trainer after the first reuses the group; tests/ddp_paradigms_script.py does the same for DDP).
Every Trainer there is sharded by ``CPUFSDP``, and a rank stuck in a collective raises after a
minute instead of hanging the test session. Each rank, writing what it saw to ``<out>/<part>/
rank<r>.pt``:

- fits each of ``ROWS`` (the transformer and the DiT of tests/test_contract.py) for ``STEPS``
  batches with gradient clipping by norm, then draws a sample grid (``SampleLogger``); it records
  the batches it saw, the names, shapes and weight decay of its optimiser's groups, its losses and
  the full state dict FSDP gathers at the end;
- fits the ``AUTOENCODER`` row one epoch and draws its latent grids (``LatentGrids``);
- evaluates ``RealDigits`` (tests/ddp_evaluation_script.py) with ``Evaluation`` on ``NUM_SAMPLES``
  samples, which split unevenly: rank 1 has one ``sample()`` call fewer to make.

``reference(row, record, ae)`` fits a row in this process on the union of the ranks' batches:
FSDP's averaged gradients, clipped by their norm over all shards, then equal the single process's.

Shape legend: B batch per rank, W world size (2).
"""

from __future__ import annotations

import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
import torch.multiprocessing as mp
from ddp_evaluation_script import RealDigits
from ddp_paradigms_script import BATCHES, free_port
from helpers import join_process_group
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import FSDPStrategy
from test_contract import AUTOENCODERS, GENERATIVE
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from lit_genai.callbacks import Evaluation, SampleLogger
from lit_genai.callbacks.latents import LatentGrids
from lit_genai.data import MNIST5k
from lit_genai.media import to_uint8
from lit_genai.nn.dit import DiTBlock
from lit_genai.nn.transformer import Block

WORLD, B, STEPS, SEED = 2, 4, 3, 0
ROWS, AUTOENCODER = ("gpt-text", "diffusion-dit"), "vae"
NUM_SAMPLES, EVAL_BATCH = 17, 8  # rank 0 draws samples 0-8 (2 calls), rank 1 samples 9-16 (1 call)
CLIP = 0.05  # small enough that every step clips: a per-shard norm would give other weights
# The layers FSDP wraps as units of their own (Lightning's auto_wrap_policy: a set of classes).
WRAP = {"gpt-text": {Block}, "diffusion-dit": {DiTBlock}}


class CPUFSDP(FSDPStrategy):
    """Lightning's FSDPStrategy on the CPU (module docstring): wraps with ``device_id=cpu`` and, for
    one process, launches nothing and ends its process group at teardown (a test runs it in pytest's
    own process)."""

    def _configure_launcher(self) -> None:
        if self.num_processes > 1:
            super()._configure_launcher()

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = FullyShardedDataParallel(
            model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )
        self.kwargs.pop("auto_wrap_policy", None)  # applied: Lightning would warn that it is ignored
        return super()._setup_model(model)

    def teardown(self) -> None:
        super().teardown()
        if self.world_size == 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class Data(L.LightningDataModule):
    """The row's training and validation sets, and ``decode`` for the grids (the row's, or images')."""

    def __init__(self, row: str, train: TensorDataset, batch_size: int) -> None:
        super().__init__()
        self.train, self.val, self.batch_size = train, train, batch_size
        self._decode = GENERATIVE[row][1](None)[1].decode if row in GENERATIVE else to_uint8

    def decode(self, samples: torch.Tensor) -> Any:
        return self._decode(samples)

    def train_dataloader(self) -> DataLoader:  # unshuffled: rank r gets examples r, r + W, ...
        return DataLoader(self.train, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size)


class Recorder(Callback):
    """What a rank saw and did: its batches, its optimiser's groups, its losses, the full weights."""

    def __init__(self) -> None:
        self.batches: list[list[torch.Tensor]] = []
        self.losses: list[float] = []
        self.groups: list[dict[str, Any]] = []
        self.state: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for group in trainer.optimizers[0].param_groups:
            shapes = [tuple(p.shape) for p in group["params"]]
            self.groups.append(
                {"names": group.get("names"), "weight_decay": group["weight_decay"], "shapes": shapes}
            )

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.batches.append([t.detach().clone() for t in batch])

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Every rank calls it: under FSDP it gathers the full weights (on rank 0) from the shards.
        self.state = {
            k: v.detach().cpu().clone() for k, v in trainer.strategy.lightning_module_state_dict().items()
        }


def module_of(row: str, ae: Optional[Path]) -> LightningModule:
    """The row's tiny module (tests/test_contract.py), initialised from ``SEED`` in every process."""
    torch.manual_seed(SEED)
    return GENERATIVE[row][1](ae)[0] if row in GENERATIVE else AUTOENCODERS[row][1]()


def data_of(row: str) -> TensorDataset:
    """W·B·STEPS training examples of the row's batch format (tests/ddp_paradigms_script.py)."""
    return TensorDataset(*BATCHES[row](WORLD * B * STEPS, torch.Generator().manual_seed(1)))


def fit(
    row: str,
    ae: Optional[Path],
    root: Path,
    train: TensorDataset,
    batch_size: int,
    strategy: Any,
    devices: int,
    clip: Optional[float] = CLIP,
    drawing: Optional[Callback] = None,
) -> tuple[LightningModule, Recorder, Callback]:
    """Fit the row for one epoch (clipping the gradient norm to ``clip``), then validate and draw with
    ``drawing`` (default: a ``SampleLogger``); the module, its record and the drawing callback."""
    data = Data(row, train, batch_size)
    drawing = drawing or SampleLogger(num_samples=2, seed=SEED)
    module, recorder = module_of(row, ae), Recorder()
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_epochs=1,
        gradient_clip_val=clip,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        default_root_dir=str(root),
        callbacks=[recorder, drawing],
    )
    torch.manual_seed(SEED)
    trainer.fit(module, datamodule=data)
    return module, recorder, drawing


class ShardableDigits(RealDigits):
    """RealDigits with a layer that FSDP wraps as a unit of its own, so that every ``sample()`` call
    gathers its weight from all ranks (a collective, as a real generator's are), and with its scale
    as a (1,) parameter (FSDP refuses 0-dimensional ones)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.gain = torch.nn.Linear(1, 1)  # the identity: weight 1, bias 0
        with torch.no_grad():
            self.gain.weight.fill_(1.0)
            self.gain.bias.zero_()

    def sample(self, n: int, **options: Any) -> torch.Tensor:
        images = super().sample(n, **options)  # (n, 1, 28, 28)
        return self.gain(images.reshape(-1, 1)).view_as(images)


class DrawnCalls(Callback):
    """At the end of ``test``: this rank's logged metrics and the size of each ``sample()`` call."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.calls: list[int] = []

    def on_test_end(self, trainer: Trainer, pl_module: ShardableDigits) -> None:
        self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self.calls = [len(labels) for _, labels in pl_module.drawn]


def evaluate(out: Path) -> dict[str, Any]:
    """``test`` RealDigits under FSDP with the Evaluation callback on ``NUM_SAMPLES`` samples."""
    module = ShardableDigits()
    evaluation = Evaluation(
        num_samples=NUM_SAMPLES,
        batch_size=EVAL_BATCH,
        num_real=60,
        cache_dir=str(out / "cache"),
        metrics=("fid",),
    )
    calls = DrawnCalls()
    trainer = Trainer(
        accelerator="cpu",
        devices=WORLD,
        strategy=CPUFSDP(auto_wrap_policy={torch.nn.Linear}, timeout=timedelta(seconds=60)),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_test_batches=1,
        default_root_dir=str(out),
        callbacks=[evaluation, calls],
    )
    trainer.test(module, datamodule=MNIST5k(batch_size=16), verbose=False)
    return {"metrics": calls.metrics, "calls": calls.calls}


def _rank(rank: int, out: Path, ae: Optional[Path], port: int) -> None:
    join_process_group(port, WORLD, local_rank=rank)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    records: dict[str, dict[str, Any]] = {}
    for row in ROWS:
        strategy = CPUFSDP(auto_wrap_policy=WRAP[row], timeout=timedelta(seconds=60))
        _, recorder, samples = fit(row, ae, out / row, data_of(row), B, strategy, devices=WORLD)
        records[row] = {
            "batches": recorder.batches,
            "losses": recorder.losses,
            "groups": recorder.groups,
            "state": recorder.state,
            "grid": str(samples.last_path) if samples.last_path else None,
        }
    grids = LatentGrids(num_images=3, traversal_dims=2)
    strategy = CPUFSDP(timeout=timedelta(seconds=60))
    fit(
        AUTOENCODER, ae, out / AUTOENCODER, data_of(AUTOENCODER), B, strategy, WORLD, clip=None, drawing=grids
    )
    records[AUTOENCODER] = {"grids": {kind: str(path) for kind, path in grids.last_paths.items()}}
    records["evaluation"] = evaluate(out / "evaluation")
    for part, record in records.items():
        (out / part).mkdir(parents=True, exist_ok=True)
        torch.save(record, out / part / f"rank{rank}.pt")


PARTS = (*ROWS, AUTOENCODER, "evaluation")


def run(out: Path, ae: Optional[Path]) -> list[dict[str, dict[str, Any]]]:
    """Fit, draw and evaluate under FSDP on two forked ranks; {part: record} of rank 0 and of rank 1."""
    mp.start_processes(_rank, args=(out, ae, free_port()), nprocs=WORLD, start_method="fork")
    return [
        {part: torch.load(out / part / f"rank{r}.pt", weights_only=True) for part in PARTS}
        for r in range(WORLD)
    ]


def reference(
    row: str, ranks: list[dict[str, Any]], ae: Optional[Path], root: Path
) -> dict[str, torch.Tensor]:
    """The row's weights after one process fits it on the union of the ranks' batches: step s on rank
    0's batch s followed by rank 1's (the order ``paradigm.this_rank`` slices a world draw in)."""
    steps = zip(*(rank["batches"] for rank in ranks), strict=True)
    batches = [[torch.cat(parts) for parts in zip(*step, strict=True)] for step in steps]
    union = TensorDataset(*(torch.cat(parts) for parts in zip(*batches, strict=True)))
    module, _, _ = fit(row, ae, root, union, WORLD * B, "auto", devices=1)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
