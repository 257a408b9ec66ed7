"""Exact resume, for every paradigm (docs/architecture.md, "Checkpoints").

One row per module an experiment uses (``test_contract.GENERATIVE`` and ``AUTOENCODERS``), trained on
a tiny random set of the batches it takes (3 batches an epoch, data in a resumable order), with the
project's callbacks: ``EMA`` where the module names an EMA target, ``ResumeState`` and the
``ModelCheckpoint`` that writes ``last.ckpt``. An uninterrupted run of 9 steps (3 epochs) is compared
with runs interrupted and resumed from their ``last.ckpt``:

- ``steps_mid_epoch``: stopped by ``max_steps`` inside an epoch (step 4 of 9), resumed to 9 steps;
- ``steps_epoch_end``: stopped by ``max_steps`` exactly at an epoch end (step 3), resumed;
- ``epochs``: stopped by ``max_epochs`` (1 of 3), resumed.

After each, the weights and buffers, the EMA, the optimiser and scheduler states, the global RNG and
the batches trained after the resume equal the uninterrupted run's, bitwise. Two more interruptions:

- ``killed``: the process dies before batch 6 (checkpoints every step), resumed from ``last.ckpt``;
- ``ctrl_c``: a real SIGINT to this process during batch 5 stops after it and saves that step.

The same two run end to end through the command line in a child process, SIGKILL and SIGINT from
outside (slow: ``test_killed_run_resumes_exactly``, ``test_ctrl_c_saves_the_step_it_stopped_at``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from test_contract import AUTOENCODERS, GENERATIVE, K
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lit_genai.callbacks import EMA, ModelCheckpoint, ResumeState
from lit_genai.data.order import training_loader

STEPS_PER_EPOCH, BATCH = 3, 2


def _rows() -> dict[str, Any]:
    rows = {name: factory for name, (_, factory) in GENERATIVE.items()}
    rows.update({name: (lambda ae, f=factory: (f(), None)) for name, (_, factory) in AUTOENCODERS.items()})
    return rows


ROWS = _rows()
# Rows of the default suite (one per kind of module and of batch); the rest run with -m slow.
FAST = {
    "diffusion-unet",
    "gan-dcgan",
    "vae-mlp",
    "gpt-text",
    "maskgit-image-tokens",
    "vqvae",
    "text2image-diffusion-unet",
    "gan-cyclegan",
    "gpt-text-lora",
}


def _examples(name: str, module: Any) -> tuple[Tensor, ...]:
    """A small random training set of the batches ``module`` takes (docs/architecture.md, "Batches")."""
    n = STEPS_PER_EPOCH * BATCH
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, K, (n,), generator=g)
    if name in ("gpt-text", "gpt-text-lora", "gpt2-chat-lora"):  # text pairs (x (B, T), y (B, T), label (B,))
        ids = torch.randint(0, 10, (n, 17), generator=g)
        return ids[:, :-1], ids[:, 1:], labels
    tokens = {  # token sequences (tokens (B, N), labels (B,)): (vocabulary, N)
        "pixelcnn-pixels": (2, 16),
        "wavenet-audio": (256, 33),
        "maskgit-image-tokens": (8, 4),
        "masked-text": (10, 12),
        "text2image-maskgit": (8, 4),
    }
    if name in tokens:
        vocab, length = tokens[name]
        sequences = torch.randint(0, vocab, (n, length), generator=g)
        if "text" in getattr(module, "conditions", ()):  # captions as token ids (n, L): 0 pads
            return sequences, labels, torch.randint(0, 6, (n, 4), generator=g)
        return sequences, labels
    shape = tuple(module.hparams.get("sample_shape") or (1, 8, 8))
    images = torch.rand((n, *shape), generator=g) * 2 - 1  # in [-1, 1]
    if "source_shape" in module.hparams:  # image-to-image: (source, target, labels[, labels])
        sources = torch.rand((n, *module.hparams["source_shape"]), generator=g) * 2 - 1
        return (sources, images, labels, labels) if name == "gan-cyclegan" else (sources, images, labels)
    if "text" in getattr(module, "conditions", ()):  # captions as token ids (n, L): 0 pads
        return images, labels, torch.randint(0, 6, (n, 4), generator=g)
    return (images.sign() if name == "vae" else images), labels  # "vae": Bernoulli pixels, binary


class Examples(L.LightningDataModule):
    """The row's examples in a resumable order (``lit_genai.data.order``); one validation batch."""

    def __init__(self, tensors: tuple[Tensor, ...]) -> None:
        super().__init__()
        self.tensors = tensors

    def train_dataloader(self) -> DataLoader:
        return training_loader(TensorDataset(*self.tensors), BATCH, 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*(t[:BATCH] for t in self.tensors)), batch_size=BATCH)


class Die(L.Callback):
    """Ends the process's training abruptly before batch ``step`` (what a SIGKILL leaves: the last
    checkpoint written, nothing after it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise Killed


class Killed(Exception):
    pass


class CtrlC(L.Callback):
    """Sends this process a SIGINT at the start of batch ``step``, as a terminal's Ctrl-C would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class Seen(L.Callback):
    """Records every training batch (its first tensor) in order."""

    def __init__(self) -> None:
        self.batches: list[Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(batch[0].clone())


def _fit(
    name: str, root: Path, ae: Path, ckpt_path: Any = None, interrupt: Any = None, every: int = 0, **stop
) -> dict[str, Any]:
    """Fit row ``name`` from a fresh seed (as a new process would) and return what must match.

    ``interrupt``: an extra callback (``Die``, ``CtrlC``); ``every``: also save last.ckpt every n steps."""
    L.seed_everything(0, verbose=False)
    module, _ = ROWS[name](ae)
    if "lr_decay_steps" in module.hparams:
        # The recipes' horizon: left to default it is the trainer's max_steps, which the interrupted
        # run changes, and a schedule of another length is another run (README, "Resuming").
        module.hparams.lr_decay_steps = 3 * STEPS_PER_EPOCH
    data = Examples(_examples(name, module))
    seen = Seen()
    ema = EMA(decay=0.9) if getattr(module, "ema_target", None) else None
    callbacks = [c for c in (ema, ResumeState(), seen, interrupt) if c is not None]
    callbacks.append(
        ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, save_top_k=0, every_n_train_steps=every)
    )
    trainer = L.Trainer(
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        callbacks=callbacks,
        **stop,
    )
    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    except Killed:
        return {}
    return {
        "step": trainer.global_step,
        "weights": module.state_dict(),
        "ema": dict(ema._shadow) if ema is not None else {},
        "optimizers": [o.state_dict() for o in trainer.optimizers],
        "schedulers": [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs],
        "rng": torch.get_rng_state(),
        "seen": seen.batches,
    }


def _assert_equal(a: Any, b: Any, where: str) -> None:
    """Bitwise equality of nested states (tensors, dicts, lists, numbers)."""
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(map(str, set(a) ^ set(b)))}"
        for key in a:
            _assert_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a} != {b}"


INTERRUPTIONS = {
    # name: (first run's settings, resumed run's stop); steps are counted in batches
    # (in batches: a GAN's global step counts both players' optimiser steps)
    "steps_mid_epoch": ({"max_steps": 4}, {"max_steps": 3 * STEPS_PER_EPOCH}),
    "steps_epoch_end": ({"max_steps": STEPS_PER_EPOCH}, {"max_steps": 3 * STEPS_PER_EPOCH}),
    "epochs": ({"max_epochs": 1}, {"max_epochs": 3}),
    # killed before batch 6 (checkpoints every step), resumed from the last one
    "killed": ({"max_steps": 3 * STEPS_PER_EPOCH, "every": 1, "die": 5}, {"max_steps": 3 * STEPS_PER_EPOCH}),
    # Ctrl-C during batch 5 of 9: stops after it and saves that step
    "ctrl_c": ({"max_steps": 3 * STEPS_PER_EPOCH, "ctrl_c": 4}, {"max_steps": 3 * STEPS_PER_EPOCH}),
}


def _check_resume(name: str, tmp_path: Path, ae: Path, interruptions: list[str]) -> None:
    straight = _fit(name, tmp_path / "straight", ae, max_epochs=3)
    assert len(straight["seen"]) == 3 * STEPS_PER_EPOCH
    per_batch = straight["step"] // len(straight["seen"])  # optimiser steps per batch
    for interruption in interruptions:
        first, rest = (
            {k: v * per_batch if k in ("max_steps", "every", "die", "ctrl_c") else v for k, v in stop.items()}
            for stop in INTERRUPTIONS[interruption]
        )
        root = tmp_path / interruption
        if "die" in first:
            first["interrupt"] = Die(first.pop("die"))
        if "ctrl_c" in first:
            first["interrupt"] = CtrlC(first.pop("ctrl_c"))
        _fit(name, root, ae, **first)
        resumed = _fit(name, root, ae, ckpt_path=root / "checkpoints" / "last.ckpt", **rest)
        tail = straight["seen"][len(straight["seen"]) - len(resumed["seen"]) :]
        for key in ("step", "weights", "ema", "optimizers", "schedulers", "rng"):
            _assert_equal(straight[key], resumed[key], f"{name}/{interruption}: {key}")
        _assert_equal(tail, resumed["seen"], f"{name}/{interruption}: batches after the resume")
        assert len(resumed["seen"]) < len(straight["seen"]), "the resumed run retrained from the start"


@pytest.mark.parametrize("name", sorted(FAST))
def test_resume_is_exact(name, tmp_path, ae_checkpoint):
    _check_resume(name, tmp_path, ae_checkpoint, list(INTERRUPTIONS))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(ROWS) - FAST))
def test_resume_is_exact_for_every_other_row(name, tmp_path, ae_checkpoint):
    _check_resume(name, tmp_path, ae_checkpoint, list(INTERRUPTIONS))


# ---------------------------------------------------------------------- kill and Ctrl-C, through the CLI

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "experiments" / "diffusion" / "mnist.yaml")
TOTAL_STEPS = 12


def _cli_args(root: Path, slow: bool = False, **trainer: Any) -> list[str]:
    """The demo at tiny sizes (``test_cli.TINY``), seeded; ``slow``: 0.3 s a step (``toys.SlowSteps``)."""
    import yaml
    from test_cli import TINY

    overrides = {**TINY, "seed_everything": 7}
    if slow:
        callbacks = [{"class_path": "toys.SlowSteps", "init_args": {"seconds": 0.3}}]
        overrides["trainer"] = {**TINY["trainer"], "callbacks": callbacks}
    config = root.parent / f"{root.name}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(overrides))
    args = ["--config", DEMO, "--config", str(config), "--trainer.default_root_dir", str(root)]
    for key, value in {"max_steps": TOTAL_STEPS, "limit_train_batches": 5, **trainer}.items():
        args += [f"--trainer.{key}", str(value)]
    return args


def _final_state(root: Path) -> dict[str, Any]:
    """What must match in a run's last.ckpt: weights, optimiser, scheduler, EMA, RNG, loop counters."""
    checkpoint = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    return {
        "global_step": checkpoint["global_step"],
        "state_dict": checkpoint["state_dict"],
        "optimizer_states": checkpoint["optimizer_states"],
        "lr_schedulers": checkpoint["lr_schedulers"],
        "ema": checkpoint["callbacks"]["EMA"],
        "rng": checkpoint["callbacks"]["ResumeState"],
    }


def _child(args: list[str], log: Path) -> subprocess.Popen:
    """``lit-genai fit <args>`` in a child process (tests/ on its path, for ``toys``), output to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "lit_genai", "fit", *args]
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def _wait_for_step(step: int, log: Path, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while f"step {step}\n" not in log.read_text():
        assert process.poll() is None, f"the run ended before step {step}: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"no step {step} in {timeout} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def straight_cli_run(tmp_path_factory) -> dict[str, Any]:
    from helpers import run_cli

    root = tmp_path_factory.mktemp("straight") / "run"
    assert run_cli(["fit", *_cli_args(root)]) in (0, None)
    return _final_state(root)


@pytest.mark.slow  # a minute: two command-line runs in child processes (the in-process rows cover it)
def test_killed_run_resumes_exactly(tmp_path, straight_cli_run):
    """SIGKILL mid-run (checkpoints every step), then ``--ckpt_path last``: the end state equals the
    uninterrupted run's, bitwise."""
    from helpers import run_cli

    root, log = tmp_path / "run", tmp_path / "log.txt"
    process = _child(_cli_args(root, slow=True) + ["--checkpoint.every_n_train_steps", "1"], log)
    try:
        _wait_for_step(3, log, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed_at = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 2 <= killed_at < TOTAL_STEPS, log.read_text()[-2000:]  # step 3 printed before its save
    assert run_cli(["fit", *_cli_args(root), "--ckpt_path", "last"]) in (0, None)
    _assert_equal(straight_cli_run, _final_state(root), f"killed at step {killed_at}")


@pytest.mark.slow  # a minute: two command-line runs in child processes (the in-process rows cover it)
def test_ctrl_c_saves_the_step_it_stopped_at(tmp_path, straight_cli_run):
    """SIGINT stops after the running batch and leaves last.ckpt of that step (before the first epoch
    end, so no other checkpoint exists); resuming from it ends where the uninterrupted run ends."""
    from helpers import run_cli

    root, log = tmp_path / "run", tmp_path / "log.txt"
    process = _child(_cli_args(root, slow=True), log)
    try:
        _wait_for_step(2, log, process)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0, log.read_text()[-2000:]
    finally:
        process.kill()
    output = log.read_text()
    assert "Ctrl-C: stopping after this batch" in output, output[-2000:]
    assert "Traceback" not in output, output[-2000:]
    stopped = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 2 <= stopped < 5, output[-2000:]
    assert f"Stopped by Ctrl-C at step {stopped}" in output, output[-2000:]
    assert run_cli(["fit", *_cli_args(root), "--ckpt_path", "last"]) in (0, None)
    _assert_equal(straight_cli_run, _final_state(root), f"stopped by Ctrl-C at step {stopped}")
