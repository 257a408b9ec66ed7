"""Every paradigm of tests/test_contract.py on two CPU (gloo) DDP ranks, and on one process, for
tests/test_ddp.py.

``run(rows, out, ae)`` forks two ranks (``torch.multiprocessing``, start method ``fork``: they
inherit this process's imports, so neither spends half a minute importing torch and Lightning). They
join one gloo process group as an externally launched job does (``MASTER_ADDR``, ``MASTER_PORT``,
``WORLD_SIZE``, ``NODE_RANK``, ``LOCAL_RANK``: Lightning's ``LightningEnvironment`` then launches
nothing, and every Trainer after the first reuses the group), so one pair of processes trains every
row in turn. For each row a rank runs ``validate`` on the initial weights, then ``fit`` for epochs of
``STEPS`` batches, each with a validation at its end, saves a checkpoint (rank 0 writes
``<out>/<row>/last.ckpt``) and writes ``<out>/<row>/rank<r>.pt``: what it saw and did
(``Recorder``).

``reference(row, records, ae, folder)`` repeats a row in this process on one device, on the union
of the ranks' batches: training batch s is rank 0's batch s followed by rank 1's (the order in which
``paradigm.this_rank`` slices a world-sized draw between the ranks), validation batch k·W + r is rank
r's batch k (the index ``paradigm.evaluation_index`` gives it). Where the loss is a mean over the
batch and nothing normalises with batch statistics, the ranks' averaged gradients then equal the
single process's; ``NOT_EXACT`` says where and why they do not.

Every draw of ``paradigm.this_rank`` (noise, timesteps, masks, label dropout, binarisation) is
recorded, so a test can see that the ranks drew different values and that together they drew the
single process's.

Shape legend: B batch per rank, W world size (2), N examples, C/H/W image, T tokens.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch.multiprocessing as mp
from helpers import join_process_group
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy
from test_contract import AUTOENCODERS, GENERATIVE, K
from torch import Tensor
from torch.utils.data import DataLoader, Sampler, TensorDataset

import lit_genai.conditions
import lit_genai.data.images
import lit_genai.data.pixels
from lit_genai import paradigm

WORLD, B, STEPS, VAL_BATCHES = 2, 4, 2, 2  # ranks, batch per rank, training batches, validation batches
SEED = 0

Batch = Callable[[int, torch.Generator], tuple[Tensor, ...]]


def _images(shape: tuple[int, int, int], binary: bool = False) -> Batch:
    """(x (N, C, H, W) in [-1, 1] (binary: -1 or 1), y (N,) in [0, K))."""

    def make(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        x = torch.rand((n, *shape), generator=g) * 2 - 1
        if binary:
            x = torch.where(x > 0, 1.0, -1.0)
        return x, torch.randint(0, K, (n,), generator=g)

    return make


def _paired(source: tuple[int, int, int], target: tuple[int, int, int], unpaired: bool = False) -> Batch:
    """Image-to-image: (source (N, Cs, H, W), target (N, C, H, W), labels (N,)[, labels (N,)])."""

    def make(n: int, g: torch.Generator) -> tuple[Tensor, ...]:
        x, t = torch.rand((n, *source), generator=g) * 2 - 1, torch.rand((n, *target), generator=g) * 2 - 1
        labels = torch.randint(0, K, (n,), generator=g)
        return (x, t, labels, labels) if unpaired else (x, t, labels)

    return make


def _captioned(shape: tuple[int, int, int], length: int, words: int) -> Batch:
    """(x (N, C, H, W), y (N,), captions as token ids (N, length) in [0, words]: 0 pads)."""
    images = _images(shape)
    return lambda n, g: (*images(n, g), torch.randint(0, words + 1, (n, length), generator=g))


def _captioned_tokens(length: int, vocab: int, caption: int, words: int) -> Batch:
    """(tokens (N, T) in [0, vocab), labels (N,), captions as token ids (N, caption) in [0, words])."""
    return lambda n, g: (
        torch.randint(0, vocab, (n, length), generator=g),
        torch.randint(0, K, (n,), generator=g),
        torch.randint(0, words + 1, (n, caption), generator=g),
    )


def _sequences(length: int, vocab: int) -> Batch:
    """A token-sequence batch: (tokens (N, T) in [0, vocab), labels (N,) in [0, K))."""
    return lambda n, g: (
        torch.randint(0, vocab, (n, length), generator=g),
        torch.randint(0, K, (n,), generator=g),
    )


def _text(block: int, vocab: int, labelled: bool) -> Batch:
    """Text windows: (x (N, T), y (N, T) = x shifted by one[, c (N,) the document])."""

    def make(n: int, g: torch.Generator) -> tuple[Tensor, ...]:
        window = torch.randint(0, vocab, (n, block + 1), generator=g)  # (N, T + 1)
        pair = (window[:, :-1], window[:, 1:])
        return (*pair, torch.randint(0, K, (n,), generator=g)) if labelled else pair

    return make


# The batch format each row's module takes (docs/architecture.md, "Batches"), at the row's sizes.
BATCHES: dict[str, Batch] = {
    "diffusion-unet": _images((1, 8, 8)),
    "diffusion-dit": _images((1, 8, 8)),
    "text2image-diffusion-unet": _captioned((1, 8, 8), 4, 5),
    "latent-diffusion-unet": _images((1, 28, 28)),
    "latent-diffusion-dit": _images((1, 28, 28)),
    "text2image-latent-diffusion-dit": _captioned((1, 28, 28), 4, 5),
    "edm-unet": _images((1, 8, 8)),
    "flow-unet": _images((1, 8, 8)),
    "gan-dcgan": _images((1, 28, 28)),
    "gan-resnet": _images((3, 32, 32)),
    "gan-pix2pix": _paired((1, 28, 28), (1, 28, 28)),
    "gan-cyclegan": _paired((1, 8, 8), (1, 8, 8), unpaired=True),
    "vae-mlp": _images((1, 28, 28)),  # grey: binarised by the module (dynamic)
    "gpt-text": _text(16, 10, labelled=True),
    "gpt-text-lora": _text(16, 10, labelled=True),
    "gpt2-chat-lora": _text(16, 10, labelled=False),
    "pixelcnn-pixels": _sequences(16, 2),  # 1x4x4 binary pixels
    "wavenet-audio": _sequences(33, 256),  # block_size 32 + the target
    "maskgit-image-tokens": _sequences(4, 8),  # 2x2 tokens of an 8-code tokenizer
    "text2image-maskgit": _captioned_tokens(4, 8, 4, 5),  # the same tokens with captions (word ids)
    "masked-text": _text(12, 10, labelled=False),
    "kl-autoencoder": _images((1, 8, 8)),
    "vqvae": _images((1, 8, 8)),
    "vae": _images((1, 8, 8), binary=True),  # Bernoulli likelihood on binary data
}
ROWS = tuple(BATCHES)

# Rows whose DDP gradients are not those of one process on the union batch, and why.
_BATCH_NORM = "batch norm normalises each rank's B examples with their own statistics, not the union's"
_MASKED_MEAN = (
    "the loss is the mean over a rank's masked tokens, whose number differs between ranks; DDP "
    "averages the ranks' means, the union takes one mean over all masked tokens"
)
NOT_EXACT = {
    "gan-dcgan": _BATCH_NORM + " (both networks)",
    "gan-resnet": _BATCH_NORM + " (the generator)",
    "gan-pix2pix": _BATCH_NORM + " (the U-Net and the PatchGAN)",
    "gan-cyclegan": (
        "each rank's image pool (3 images in this row) holds that rank's fakes, so once it is full the "
        "discriminators see another history than one process's pool of the union batch"
    ),
    "maskgit-image-tokens": _MASKED_MEAN,
    "text2image-maskgit": _MASKED_MEAN,
    "masked-text": _MASKED_MEAN,
}
# Rows whose parameters move apart from one process's after the first step although its gradients
# were equal: dead codes restart from random encoder outputs of rank 0's batch (broadcast to every
# rank, nn/vq.py), one process picks them from the union batch.
FIRST_STEP_ONLY = {"vqvae": "dead codebook entries restart from rank 0's batch, not the union's"}


def module_of(row: str, ae: Path) -> LightningModule:
    """The row's tiny module, initialised from ``SEED`` (the same weights in every process)."""
    torch.manual_seed(SEED)
    if row in GENERATIVE:
        return GENERATIVE[row][1](ae)[0]
    return AUTOENCODERS[row][1]()


def data_of(row: str) -> tuple[TensorDataset, TensorDataset]:
    """(training set of W·B·STEPS examples, validation set of W·B·VAL_BATCHES), fixed per row."""
    g = torch.Generator().manual_seed(1)
    make = BATCHES[row]
    return TensorDataset(*make(WORLD * B * STEPS, g)), TensorDataset(*make(WORLD * B * VAL_BATCHES, g))


# ---------------------------------------------------------------------- what a process records


def _copy(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, (list, tuple)):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


class Recorder(Callback):
    """Keeps what this process saw and did: its training batches and those of the validation
    before training, the gradients of the parameters each optimiser step updates (after DDP's
    all-reduce), every ``this_rank`` draw, the batch statistics each batch norm normalised with in
    training (``norms``: {layer: [(mean (C,), unbiased variance (C,)) per call]}), and the state
    dict at the end of ``fit``."""

    def __init__(self) -> None:
        self.train: list[Any] = []
        self.val: list[Any] = []
        self.grads: list[dict[str, Tensor]] = []
        self.draws: list[Tensor] = []
        self.norms: dict[str, list[tuple[Tensor, Tensor]]] = {}
        self.state: dict[str, Tensor] = {}
        self._hooks: list[Any] = []

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for name, layer in pl_module.named_modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                self.norms[name] = []
                self._hooks.append(layer.register_forward_pre_hook(self._probe(name)))

    def _probe(self, name: str) -> Callable[..., None]:
        def hook(layer: torch.nn.Module, args: tuple[Tensor, ...]) -> None:
            if layer.training:
                x = args[0].detach()  # (B, C, H, W)
                self.norms[name].append((x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)))

        return hook

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.train.append(_copy(batch))

    def on_validation_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.state.fn == "validate":  # the validation before training
            self.val.append(_copy(batch))

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self.grads.append(
            {
                name: _copy(p.grad)
                for name, p in pl_module.named_parameters()
                if id(p) in stepped and p.grad is not None
            }
        )

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.state = {k: _copy(v) for k, v in pl_module.state_dict().items()}
        for hook in self._hooks:
            hook.remove()

    def record(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in ("train", "val", "grads", "draws", "norms", "state")}


@contextmanager
def recording_draws(recorder: Recorder) -> Iterator[None]:
    """Record every value ``paradigm.this_rank`` hands out, in every module that calls it."""
    original = paradigm.this_rank

    def this_rank(draw: Callable[[int], Tensor], n: int, trainer: Any = None) -> Tensor:
        out = original(draw, n, trainer)
        recorder.draws.append(_copy(out))
        return out

    owners = (paradigm, lit_genai.conditions, lit_genai.data.images, lit_genai.data.pixels)
    with ExitStack() as stack:
        for owner in owners:
            stack.enter_context(mock.patch.object(owner, "this_rank", this_rank))
        yield


def _trainer(root: Path, callbacks: list[Callback], **kwargs: Any) -> Trainer:
    return Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        callbacks=callbacks,
        **kwargs,
    )


def _metrics(trainer: Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def _train_and_record(
    row: str,
    ae: Path,
    root: Path,
    train: DataLoader,
    val: DataLoader,
    devices: int,
    strategy: Callable[[], Any],
    epochs: int,
) -> dict[str, Any]:
    """``validate`` then ``fit`` the row's module for ``epochs`` epochs, then save a checkpoint as
    ``<root>/last.ckpt``; the record (``Recorder``) and the metrics. ``strategy`` makes each
    Trainer's strategy (a strategy object serves one Trainer)."""
    module = module_of(row, ae)
    recorder = Recorder()
    trainer = _trainer(root, [recorder], devices=devices, strategy=strategy(), max_epochs=epochs)
    trainer.validate(module, val, verbose=False)
    validated = _metrics(trainer)
    trainer = _trainer(root, [recorder], devices=devices, strategy=strategy(), max_epochs=epochs)
    with recording_draws(recorder):
        trainer.fit(module, train, val)
    trainer.save_checkpoint(root / "last.ckpt")  # every rank calls it; rank 0 writes
    return {**recorder.record(), "validate": validated, "fit": _metrics(trainer)}


# ---------------------------------------------------------------------- two ranks


def _strategy(row: str) -> DDPStrategy:
    # A GAN's toggled players leave parameters unused in each backward pass (gan/module.py, "DDP").
    # A rank stuck in a collective raises after a minute instead of hanging the test session.
    return DDPStrategy(find_unused_parameters=row.startswith("gan-"), timeout=timedelta(seconds=60))


def _rank(rank: int, rows: tuple[str, ...], out: Path, ae: Path, port: int, epochs: int) -> None:
    join_process_group(port, WORLD, local_rank=rank)
    # Set by an earlier seed_everything in this process (the CLI's), it would make the DDP setup
    # reseed the ranks (Lightning's reset_seed) and seed the DistributedSampler, unlike one process.
    os.environ.pop("PL_GLOBAL_SEED", None)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    for row in rows:
        train, val = data_of(row)
        # Unshuffled loaders: Lightning's DistributedSampler gives rank r the examples r, r + W, ...
        record = _train_and_record(
            row,
            ae,
            out / row,
            DataLoader(train, batch_size=B),
            DataLoader(val, batch_size=B),
            devices=WORLD,
            strategy=partial(_strategy, row),
            epochs=epochs,
        )
        torch.save(record, out / row / f"rank{rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(rows: tuple[str, ...], out: Path, ae: Path, epochs: int = 1) -> list[dict[str, dict[str, Any]]]:
    """Train ``rows`` on two forked ranks; {row: record} of rank 0 and of rank 1. Rank 0 writes
    ``<out>/<row>/last.ckpt``."""
    mp.start_processes(_rank, args=(rows, out, ae, free_port(), epochs), nprocs=WORLD, start_method="fork")
    return [
        {row: torch.load(out / row / f"rank{r}.pt", weights_only=True) for row in rows} for r in range(WORLD)
    ]


# ---------------------------------------------------------------------- one process


def _union_train(ranks: list[dict[str, Any]]) -> TensorDataset:
    """Training batch s of one process: rank 0's batch s, then rank 1's, ...; the batches of every
    epoch (Lightning's DistributedSampler shuffles each epoch anew), in order, as one data set."""
    steps = zip(*(rank["train"] for rank in ranks), strict=True)
    batches = [[torch.cat(parts) for parts in zip(*step, strict=True)] for step in steps]
    return TensorDataset(*(torch.cat(parts) for parts in zip(*batches, strict=True)))


def _union_val(ranks: list[dict[str, Any]]) -> TensorDataset:
    """Validation batch k·W + r of one process is rank r's batch k."""
    batches = [batch for step in zip(*(rank["val"] for rank in ranks), strict=True) for batch in step]
    return TensorDataset(*(torch.cat(parts) for parts in zip(*batches, strict=True)))


class EpochBlocks(Sampler[int]):
    """Epoch e yields e·n, ..., e·n + n - 1: the union batches of the ranks' epoch e (Lightning calls
    ``set_epoch``)."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.epoch * self.n, (self.epoch + 1) * self.n))

    def __len__(self) -> int:
        return self.n


def reference(row: str, ranks: list[dict[str, Any]], ae: Path, root: Path, epochs: int = 1) -> dict[str, Any]:
    """The row on one process for ``epochs`` epochs, on the union of the ranks' batches of each
    epoch (module docstring)."""
    train, val = _union_train(ranks), _union_val(ranks)
    return _train_and_record(
        row,
        ae,
        root,
        DataLoader(train, batch_size=WORLD * B, sampler=EpochBlocks(WORLD * B * STEPS)),
        DataLoader(val, batch_size=B),
        devices=1,
        strategy=lambda: "auto",
        epochs=epochs,
    )
