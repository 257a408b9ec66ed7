"""One GPU check in one run: recipe throughput, MFU, mixed precision and DDP, written to one JSON.

What it measures (four parts; ``--parts`` picks some)
    ``ddpm``       training images/s of the UNet of ``experiments/diffusion/ddpm_cifar10.yaml`` (read
                   from the YAML; 35.7M parameters) at batch 128 on random CIFAR-shaped tensors
                   made on the device (no download): the plain PyTorch loop of
                   ``benchmarks/diffusion_step.py`` vs ``lit_genai.diffusion.Diffusion`` on
                   ``lightning.Trainer``, in the recipe's precision (it sets none: 32-true), the
                   same weights and random stream on both sides; their ratio and ``max |dloss|``.
    ``gpt``        tokens/s and model FLOPs utilisation of the GPT of
                   ``experiments/ar/shakespeare_char.yaml`` (6 layers, 6 heads, 384 wide, block 256,
                   batch 64, vocabulary 65) on random tokens, bf16 autocast: the plain loop and
                   ``NextToken`` on Lightning, paired step by step as in ``benchmarks/gpt_step.py``,
                   eager and with ``torch.compile``. MFU is nanoGPT's ``estimate_mfu``:
                   (6 N + 12 L H Q T) x tokens/s over the card's peak dense bf16 FLOPs (``PEAK_BF16``,
                   found in ``torch.cuda.get_device_name()``; another card gives ``null``).
    ``precision``  short fits through ``LitGenAICLI`` of ``experiments/gan/dcgan_mnist.yaml`` (two
                   optimisers; ``16-mixed`` takes Lightning's GradScaler path) and
                   ``experiments/diffusion/mnist.yaml`` in ``16-mixed`` and ``bf16-mixed``: whether
                   every logged training loss was finite, and training batches per second.
    ``ddp``        the same diffusion fit (32-true) with ``trainer.devices=-1, strategy=ddp`` on
                   every visible GPU, in a subprocess of this script (``--ddp-worker``) that
                   Lightning re-runs for the other ranks; one GPU still runs the DDP path as world
                   size 1: world size, finite losses, batches per second.
    Also recorded: torch, CUDA, cuDNN and Lightning versions, device name and memory, and
    ``torch.cuda.max_memory_allocated`` of ``ddpm`` and ``gpt``.

    Each part runs guarded: an exception becomes that part's ``"error"`` string (one line; the
    traceback goes to stderr) and the next part runs. The parts share ``--budget-s`` seconds
    (``SHARES``; time a part leaves unused goes to the next ones); step counts are sized from a
    short probe, a Lightning fit past its deadline stops early, and the DDP subprocess is killed
    at its deadline. The JSON is rewritten after every part, so a run cut short keeps what it did.
    Steps are timed as in the two benchmarks: between consecutive step ends, after
    ``torch.cuda.synchronize``, warm-up (and compilation) steps left out, medians reported.

How to run
    bash benchmarks/gpu_check.sh                         # one GPU, about 9 min: gpu_check.json
    bash benchmarks/gpu_check.sh --parts ddpm,gpt --budget-s 300 --out results.json
    bash benchmarks/gpu_check.sh --dry-run --out r.json  # CPU, tiny sizes, 1-2 steps: checks the code

    ``--out`` defaults to ``$OUT/gpu_check.json`` when ``OUT`` is set, else ``gpu_check.json``.
    Through ``gpu_check.sh`` the budget counts from the wrapper's start (interpreter start and
    imports included, ``startup_s`` in the JSON); ``wall_s`` is the whole run so far.
    ``--dry-run`` runs every part on the CPU at tiny sizes (``torch.compile`` with the ``eager``
    backend, no code generation) and checks the JSON's keys; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import Callback, Trainer
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the two benchmarks beside this file
import diffusion_step  # noqa: E402
import gpt_step  # noqa: E402

from lit_genai.ar.module import NextToken, nanogpt_lr, parameter_groups  # noqa: E402
from lit_genai.diffusion import Diffusion  # noqa: E402
from lit_genai.nn import UNet  # noqa: E402
from lit_genai.nn.transformer import GPT  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DDPM_CIFAR10 = ROOT / "experiments" / "diffusion" / "ddpm_cifar10.yaml"
SHAKESPEARE = ROOT / "experiments" / "ar" / "shakespeare_char.yaml"
DCGAN_MNIST = ROOT / "experiments" / "gan" / "dcgan_mnist.yaml"
DIFFUSION_MNIST = ROOT / "experiments" / "diffusion" / "mnist.yaml"

PARTS = ("ddpm", "gpt", "precision", "ddp")
SHARES = {"ddpm": 0.2, "gpt": 0.45, "precision": 0.2, "ddp": 0.15}  # of --budget-s
# Peak dense bf16 tensor FLOP/s by name fragment, first match wins (NVIDIA data sheets).
PEAK_BF16 = (
    (("H200",), 989e12),
    (("H100", "PCIe"), 756e12),
    (("H100", "SXM"), 989e12),
    (("H100", "HBM3"), 989e12),  # the SXM card reports itself as "NVIDIA H100 80GB HBM3"
    (("A100",), 312e12),
)
# What every part records besides its own numbers; the keys of each part's numbers.
COMMON_KEYS = ("status", "error", "seconds")
PART_KEYS = {
    "ddpm": ("params", "batch_size", "precision", "steps", "plain_images_per_s",
             "lightning_images_per_s", "lightning_vs_plain", "max_abs_dloss", "peak_memory_gib"),
    "gpt": ("params", "flops_per_token", "peak_flops", "batch_size", "block_size", "variants",
            "compile_error", "peak_memory_gib"),
    "precision": ("runs", "all_finite"),
    "ddp": ("world_size", "strategy", "losses_finite", "n_losses", "batches", "batches_per_s"),
}  # fmt: skip
GPT_VARIANTS = ("plain", "Lightning", "plain + compile", "Lightning + compile")
GPT_VARIANT_KEYS = ("ms_per_step", "tokens_per_s", "mfu", "first_step_s", "steps")
RUN_KEYS = ("precision", "losses_finite", "n_losses", "batches", "batches_per_s")


# ----------------------------------------------------------------------------- shared pieces


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def read_yaml(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


class Deadline(Callback):
    """Stops a Lightning fit at the end of the first training batch past ``deadline`` (perf_counter)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if time.perf_counter() > self.deadline:
            trainer.should_stop = True


def quiet_trainer(device: torch.device, steps: int, callbacks: list, **kwargs: Any) -> Trainer:
    return Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
        **kwargs,
    )


# ----------------------------------------------------------------------------- part 1: ddpm


def ddpm_recipe(dry_run: bool) -> tuple[dict, float, str]:
    """The recipe's UNet init args, Adam LR and precision; checks its loss is the one the plain loop runs."""
    cfg = read_yaml(DDPM_CIFAR10)
    model = cfg["model"]["init_args"]
    recipe = (model["num_timesteps"], model["beta_schedule"], model["prediction"])
    loop = (diffusion_step.NUM_TIMESTEPS, diffusion_step.SCHEDULE, diffusion_step.PREDICTION)
    if recipe != loop:
        raise ValueError(f"ddpm_cifar10.yaml trains {recipe}, benchmarks/diffusion_step.py {loop}")
    unet = dict(model["net"]["init_args"])
    if dry_run:  # the tiny UNet of diffusion_step.py, in colour and unconditional
        unet = {**diffusion_step.TINY_UNET, "in_channels": 3, "num_classes": 0}
    precision = str(cfg.get("trainer", {}).get("precision", "32-true"))
    return unet, float(model["optimizer"]["init_args"]["lr"]), precision


def autocast(device: torch.device, precision: str):
    if precision in ("32-true", "32"):
        return contextlib.nullcontext()
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision {precision!r}: this check runs 32-true or bf16-mixed")


def ddpm_lightning(
    unet: dict, lr: float, batches: list, device: torch.device, warmup: int, precision: str
) -> tuple[list[float], list[float]]:
    """``Diffusion`` on a Trainer (as diffusion_step.run_lightning, in ``precision``, no EMA)."""
    model = Diffusion(
        diffusion_step.build_net(unet),
        sample_shape=tuple(batches[0][0].shape[1:]),
        num_classes=unet.get("num_classes", 0),
        num_timesteps=diffusion_step.NUM_TIMESTEPS,
        beta_schedule=diffusion_step.SCHEDULE,
        prediction=diffusion_step.PREDICTION,
        p_uncond=diffusion_step.P_UNCOND,
        optimizer=functools.partial(torch.optim.Adam, lr=lr),
    )
    timer = diffusion_step.StepTimer()
    trainer = quiet_trainer(device, len(batches), [timer], precision=precision)
    trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    return diffusion_step.step_times(timer.ends, warmup), [float(v) for v in timer.losses]


def part_ddpm(device: torch.device, dry_run: bool, deadline: float) -> dict:
    unet, lr, precision = ddpm_recipe(dry_run)
    batch, side = (4, 32) if dry_run else (128, 32)
    reset_peak(device)

    def make(n: int) -> list[tuple[Tensor, Tensor]]:
        g = torch.Generator(device).manual_seed(diffusion_step.SEED)
        x = torch.rand((n, batch, 3, side, side), generator=g, device=device) * 2 - 1
        return [(x[i], torch.zeros(batch, dtype=torch.long, device=device)) for i in range(n)]

    def plain(batches: list, warmup: int) -> tuple[list[float], list[float]]:
        with autocast(device, precision):
            return diffusion_step.run_plain(unet, lr, batches, device, warmup)

    warmup, steps, rounds = 1, 2, 1
    if not dry_run:  # size the run from a probe: 2 variants x rounds x (warmup + steps) in the budget
        probe, _ = plain(make(6), 3)
        per_step = statistics.median(probe)
        fit = (deadline - time.perf_counter()) * 0.7 / (2 * per_step)
        warmup, rounds = 5, 2
        steps = int(max(5, min(50, fit / rounds - warmup)))
    batches = make(warmup + steps)
    times: dict[str, list[float]] = {"plain": [], "lightning": []}
    dloss = 0.0
    for _ in range(rounds):  # in turn, so that a drifting clock slows both alike
        t_plain, l_plain = plain(batches, warmup)
        t_light, l_light = ddpm_lightning(unet, lr, batches, device, warmup, precision)
        times["plain"] += t_plain
        times["lightning"] += t_light
        dloss = max([dloss] + [abs(a - b) for a, b in zip(l_plain, l_light, strict=True)])
    ips = {k: batch / statistics.median(v) for k, v in times.items()}
    return {
        "params": diffusion_step.count_params(UNet(**unet)),
        "batch_size": batch,
        "precision": precision,
        "steps": len(times["plain"]),
        "plain_images_per_s": ips["plain"],
        "lightning_images_per_s": ips["lightning"],
        "lightning_vs_plain": ips["lightning"] / ips["plain"],
        "max_abs_dloss": dloss,
        "peak_memory_gib": peak_memory_gib(device),
    }


# ----------------------------------------------------------------------------- part 2: gpt


def peak_bf16_flops(name: str) -> float | None:
    for fragments, flops in PEAK_BF16:
        if all(f in name for f in fragments):
            return flops
    return None


def flops_per_token(net: GPT, n_layer: int, n_head: int, n_embd: int, block: int) -> float:
    """nanoGPT's estimate_mfu: 6 N (non-embedding parameters) + 12 L H Q T for attention."""
    return 6 * net.num_params() + 12 * n_layer * n_head * (n_embd // n_head) * block


class PlainGPT:
    """gpt_step.PlainLoop for any GPT, in bf16 autocast: forward and loss under autocast, fp32 weights."""

    def __init__(self, net_args: dict, train: dict, device: torch.device, steps: int, compile: bool):
        torch.manual_seed(gpt_step.SEED)
        self.net = GPT(**net_args).to(device).train()
        self.model = torch.compile(self.net) if compile else self.net
        lr, self.clip = train["lr"], train["clip"]
        self.opt = torch.optim.AdamW(
            parameter_groups(self.net, train["weight_decay"]), lr=lr, betas=train["betas"]
        )
        schedule = functools.partial(
            nanogpt_lr, lr=lr, warmup_steps=train["warmup"], decay_steps=steps, min_lr=train["min_lr"]
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: schedule(s) / lr)
        self.device = device

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            logits = self.model(x)  # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.clip)
        self.opt.step()
        self.sched.step()
        return loss.detach()


def gpt_recipe(dry_run: bool) -> tuple[dict, dict, int, str]:
    """GPT init args, the training values, the batch size and precision of the Shakespeare recipe."""
    cfg = read_yaml(SHAKESPEARE)
    model = cfg["model"]["init_args"]
    opt = model["optimizer"]["init_args"]
    train = {
        "lr": float(opt["lr"]),
        "betas": tuple(opt["betas"]),
        "weight_decay": float(model["weight_decay"]),
        "warmup": int(model["warmup_steps"]),
        "min_lr": float(model["min_lr"]),
        "clip": float(cfg["trainer"]["gradient_clip_val"]),
    }
    net = dict(model["net"]["init_args"])
    batch = int(cfg["data"]["init_args"]["batch_size"])
    if dry_run:
        net.update(block_size=16, n_layer=2, n_head=2, n_embd=32)
        batch = 2
    return net, train, batch, str(cfg["trainer"]["precision"])


def gpt_pair(
    net_args: dict, train: dict, batches: list, device: torch.device, precision: str, compile: bool,
    deadline: float,
) -> gpt_step.Paired:  # fmt: skip
    """NextToken on a Trainer paired step by step with ``PlainGPT`` (gpt_step.Paired)."""
    torch.manual_seed(gpt_step.SEED)
    model = NextToken(
        GPT(**net_args),
        vocab_size=net_args["vocab_size"],
        block_size=net_args["block_size"],
        optimizer=functools.partial(torch.optim.AdamW, lr=train["lr"], betas=train["betas"]),
        weight_decay=train["weight_decay"],
        warmup_steps=train["warmup"],
        lr_decay_steps=len(batches),
        min_lr=train["min_lr"],
        compile=compile,
    )
    pair = gpt_step.Paired(PlainGPT(net_args, train, device, len(batches), compile), batches)
    trainer = quiet_trainer(
        device, len(batches), [pair, Deadline(deadline)], precision=precision,
        gradient_clip_val=train["clip"], log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    return pair


@contextlib.contextmanager
def eager_compile(enabled: bool):
    """``torch.compile`` with the ``eager`` backend (dynamo traces, nothing is generated): dry runs."""
    if not enabled:
        yield
        return
    original = torch.compile
    torch.compile = functools.partial(original, backend="eager")
    try:
        yield
    finally:
        torch.compile = original


def part_gpt(device: torch.device, dry_run: bool, deadline: float) -> dict:
    net_args, train, batch, precision = gpt_recipe(dry_run)
    block, vocab = net_args["block_size"], net_args["vocab_size"]
    reset_peak(device)
    net = GPT(**net_args)
    per_token = flops_per_token(net, net_args["n_layer"], net_args["n_head"], net_args["n_embd"], block)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_bf16_flops(name)
    warmup, steps = (1, 2) if dry_run else (10, 100)
    g = torch.Generator(device).manual_seed(gpt_step.SEED)
    tokens = torch.randint(0, vocab, (warmup + steps, batch, block + 1), generator=g, device=device)
    # (B, T) inputs, (B, T) next-token targets
    batches = [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in tokens]
    variants: dict[str, dict | None] = dict.fromkeys(GPT_VARIANTS)
    compile_error = None
    start = time.perf_counter()
    for compiled in (False, True):
        # the compiled pair gets what the eager one left, the eager one about a third of the part
        share = deadline if compiled else start + (deadline - start) / 3
        try:
            with eager_compile(compiled and dry_run):
                pair = gpt_pair(net_args, train, batches, device, precision, compiled, share)
        except Exception as error:  # a compile failure keeps the eager numbers
            if not compiled:
                raise
            traceback.print_exc()
            compile_error = one_line(error)
            continue
        suffix = " + compile" if compiled else ""
        for label, seconds in (("plain", pair.plain_times), ("Lightning", pair.lightning)):
            timed = seconds[warmup:] or seconds[-1:]  # a pair stopped inside its warm-up: its last step
            ms = statistics.median(timed) * 1e3
            tps = batch * block / ms * 1e3
            variants[label + suffix] = {
                "ms_per_step": ms,
                "tokens_per_s": tps,
                "mfu": None if peak is None else per_token * tps / peak,
                "first_step_s": seconds[0],  # compilation included
                "steps": len(timed),
            }
    return {
        "params": net.num_params(),
        "flops_per_token": per_token,
        "peak_flops": peak,
        "batch_size": batch,
        "block_size": block,
        "variants": variants,
        "compile_error": compile_error,
        "peak_memory_gib": peak_memory_gib(device),
    }


# ----------------------------------------------------------------------------- parts 3 and 4: CLI fits


def shrunk(paradigm: str, batches: int, root: Path, dry_run: bool) -> dict:
    """Override YAML of a short fit: ``batches`` training batches, one validation batch, no logger,
    no samples; tiny networks in a dry run."""
    config: dict = {
        "trainer": {
            "max_epochs": 1,
            "max_steps": -1,
            "limit_train_batches": batches,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(root),
        },
        "samples": {"every_n_epochs": 0},
    }
    if dry_run and paradigm == "gan":
        config["model"] = {
            "init_args": {
                "net_g": {"init_args": {"latent_dim": 8, "base_channels": 4}},
                "net_d": {"init_args": {"base_channels": 4}},
            }
        }
        config["data"] = {"init_args": {"batch_size": 4}}
    elif dry_run:
        config["model"] = {
            "init_args": {
                "net": {
                    "init_args": {
                        "base_channels": 8,
                        "channel_mult": [1, 2],
                        "num_groups": 4,
                        "attention_levels": [],
                    }
                },
                "num_timesteps": 50,
            }
        }
        config["data"] = {"init_args": {"batch_size": 4}}
    return config


class FitRecord(Callback):
    """Every training batch's end time and logged losses (``train/`` metrics, or the returned loss)."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        metrics = trainer.callback_metrics  # train/loss; the GAN's train/d_loss and train/g_loss
        logged = [float(v) for k, v in metrics.items() if k.startswith("train/") and "loss" in k]
        if not logged and isinstance(outputs, dict) and "loss" in outputs:
            logged = [float(outputs["loss"])]  # nothing logged: what training_step returned
        self.losses += logged
        sync(pl_module.device)
        self.ends.append(time.perf_counter())

    def result(self, precision: str) -> dict:
        span = self.ends[-1] - self.ends[0] if len(self.ends) > 1 else float("nan")
        return {
            "precision": precision,
            "losses_finite": bool(self.losses) and all(math.isfinite(v) for v in self.losses),
            "n_losses": len(self.losses),
            "batches": len(self.ends),
            "batches_per_s": (len(self.ends) - 1) / span,  # the first batch (set-up) left out
        }


def cli_fit(base: Path, override: dict, folder: Path, trainer_args: dict, deadline: float):
    """Builds ``LitGenAICLI`` from ``base`` + the override YAML (written in ``folder``) + ``trainer_args``,
    then fits with ``FitRecord`` attached; returns (the trainer, the record)."""
    from lit_genai.cli import LitGenAICLI, quiet_library_notices

    quiet_library_notices()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "override.yaml"
    path.write_text(yaml.safe_dump(override))
    args = ["--config", str(base), "--config", str(path)]
    args += [f"--trainer.{k}={v}" for k, v in trainer_args.items()]
    cli = LitGenAICLI(args=args, run=False)
    record = FitRecord()
    cli.trainer.callbacks.extend([record, Deadline(deadline)])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli.trainer, record


def part_precision(device: torch.device, dry_run: bool, deadline: float) -> dict:
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    batches = 2 if dry_run else 40
    runs: dict[str, dict] = {}
    start = time.perf_counter()
    rows = [(p, b, precision) for p, b in (("gan", DCGAN_MNIST), ("diffusion", DIFFUSION_MNIST))
            for precision in ("16-mixed", "bf16-mixed")]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for i, (paradigm, base, precision) in enumerate(rows):
            name = f"{paradigm} {precision}"
            end = start + (deadline - start) * (i + 1) / len(rows)  # an equal share each
            try:
                trainer, record = cli_fit(
                    base,
                    shrunk(paradigm, batches, Path(tmp) / name.replace(" ", "-"), dry_run),
                    Path(tmp) / "configs" / name.replace(" ", "-"),
                    {"accelerator": accelerator, "devices": 1, "precision": precision},
                    end,
                )
                # 16-mixed on a CPU runs as bf16-mixed: record what ran
                runs[name] = record.result(str(trainer.precision))
            except Exception as error:
                traceback.print_exc()
                runs[name] = {"error": one_line(error)}
    finite = all(r.get("losses_finite") is True for r in runs.values())
    return {"runs": runs, "all_finite": finite}


def ddp_worker(folder: Path) -> None:
    """One rank of the DDP part (Lightning starts the other ranks by re-running this command);
    rank 0 writes ``result.json`` in ``folder``."""
    spec = json.loads((folder / "spec.json").read_text())
    trainer, record = cli_fit(
        DIFFUSION_MNIST,
        spec["override"],
        folder / f"rank{os.environ.get('LOCAL_RANK', '0')}",
        spec["trainer"],
        spec["deadline_epoch"] - time.time() + time.perf_counter(),
    )
    if trainer.global_rank == 0:
        result = record.result(str(trainer.precision))
        result.update(world_size=trainer.world_size, strategy=type(trainer.strategy).__name__)
        (folder / "result.json").write_text(json.dumps(result))


def part_ddp(device: torch.device, dry_run: bool, deadline: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        trainer = {
            "accelerator": "gpu" if device.type == "cuda" else "cpu",
            "devices": 1 if dry_run else -1,  # -1: every visible GPU
            "strategy": "ddp",
        }
        left = deadline - time.perf_counter()
        spec = {
            "override": shrunk("diffusion", 2 if dry_run else 40, folder / "run", dry_run),
            "trainer": trainer,
            "deadline_epoch": time.time() + left * 0.8,  # Lightning stops; the kill below is the backstop
        }
        (folder / "spec.json").write_text(json.dumps(spec))
        command = [sys.executable, str(Path(__file__).resolve()), "--ddp-worker", str(folder)]
        try:
            done = subprocess.run(command, timeout=max(left, 1), capture_output=True, text=True)
        except subprocess.TimeoutExpired as error:
            raise TimeoutError(f"the DDP fit ran past its {left:.0f} s") from error
        if done.returncode != 0 or not (folder / "result.json").exists():
            sys.stderr.write(done.stderr[-4000:])
            lines = done.stderr.strip().splitlines() or ["no output"]
            raise RuntimeError(f"the DDP fit exited with {done.returncode}: {lines[-1]}")
        result = json.loads((folder / "result.json").read_text())
    return {k: result[k] for k in PART_KEYS["ddp"]}


# ----------------------------------------------------------------------------- driver

RUNNERS: dict[str, Callable[[torch.device, bool, float], dict]] = {
    "ddpm": part_ddpm,
    "gpt": part_gpt,
    "precision": part_precision,
    "ddp": part_ddp,
}


def environment(device: torch.device) -> dict:
    import lightning

    env = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "lightning": lightning.__version__,
        "python": sys.version.split()[0],
        "device": "cpu",
        "device_count": 0,
        "total_memory_gib": None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            device=torch.cuda.get_device_name(device),
            device_count=torch.cuda.device_count(),
            total_memory_gib=props.total_memory / 2**30,
            capability=f"{props.major}.{props.minor}",
        )
    return env


def write_json(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    part.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    part.replace(out)  # whole or not at all


def check_schema(report: dict) -> list[str]:
    """What is missing from or wrong in ``report``: empty when every part has its keys."""
    problems = [f"missing {k}" for k in ("dry_run", "environment", "parts") if k not in report]
    for name, part in report.get("parts", {}).items():
        if part.get("status") == "skipped":
            continue
        keys = COMMON_KEYS + (PART_KEYS[name] if part.get("status") == "ok" else ())
        problems += [f"{name}: missing {k}" for k in keys if k not in part]
    return problems


def fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def summary(report: dict) -> str:
    env, parts = report["environment"], report["parts"]
    lines = [
        f"gpu_check{' (dry run)' if report['dry_run'] else ''}: {env['device']}, torch {env['torch']}, "
        f"CUDA {env['cuda']}, {report['wall_s']:.0f} s of {report['budget_s']:.0f}",
        f"{'part':<11}{'status':<9}{'s':>6}  result",
    ]
    for name, part in parts.items():
        status = part["status"]
        head = f"{name:<11}{status:<9}{fmt(part.get('seconds'), '.0f'):>6}  "
        if status != "ok":
            lines.append(head + (part.get("error") or ""))
            continue
        if name == "ddpm":
            text = (
                f"plain {part['plain_images_per_s']:.0f} img/s, Lightning "
                f"{part['lightning_images_per_s']:.0f} img/s ({part['lightning_vs_plain']:.3f}x), "
                f"{part['precision']}, peak {fmt(part['peak_memory_gib'], '.1f')} GiB"
            )
        elif name == "gpt":
            rows = [
                f"{k} {v['tokens_per_s'] / 1e3:.0f}k tok/s MFU {fmt(v['mfu'] and 100 * v['mfu'])}%"
                for k, v in part["variants"].items()
                if v is not None
            ]
            text = "; ".join(rows) + (f"; compile: {part['compile_error']}" if part["compile_error"] else "")
        elif name == "precision":
            text = "; ".join(
                f"{k} " + (f"finite={r['losses_finite']} {r['batches_per_s']:.1f} b/s" if "error" not in r
                           else r["error"])
                for k, r in part["runs"].items()
            )  # fmt: skip
        else:
            text = (
                f"world {part['world_size']}, finite={part['losses_finite']}, "
                f"{part['batches_per_s']:.1f} batches/s"
            )
        lines.append(head + text)
    return "\n".join(lines)


def default_out() -> Path:
    return Path(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else Path("gpu_check.json")


def parse_parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"parts are a comma-separated subset of {','.join(PARTS)}")
    return [p for p in PARTS if p in parts]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default $OUT/gpu_check.json)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, 1-2 steps per part")
    parser.add_argument("--budget-s", type=float, default=540.0, help="seconds for all parts (540)")
    parser.add_argument("--parts", type=parse_parts, default=list(PARTS), help=",".join(PARTS))
    parser.add_argument("--ddp-worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    for message in ("does not have many workers", "LeafSpec", "Tensor Cores", "no `val_dataloader`",
                    "AMP with fp16 is not supported on CPU", "sync_dist", "No seed found",
                    "args parameter is intended"):  # fmt: skip
        warnings.filterwarnings("ignore", message=f".*{message}.*")
    if args.ddp_worker is not None:
        ddp_worker(args.ddp_worker)
        return 0
    if args.budget_s <= 0:
        parser.error("--budget-s must be > 0")
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: this check needs a GPU (or --dry-run on the CPU)")

    out = args.out or default_out()
    device = torch.device("cpu" if args.dry_run else "cuda")
    # The budget counts from the wrapper's start (GPU_CHECK_T0, epoch seconds): imports included.
    startup = max(0.0, time.time() - float(os.environ.get("GPU_CHECK_T0") or time.time()))
    start = time.perf_counter() - startup
    end = start + args.budget_s
    report: dict[str, Any] = {
        "dry_run": args.dry_run,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "budget_s": args.budget_s,
        "startup_s": startup,
        "wall_s": 0.0,
        "environment": environment(device),
        "parts": {name: {"status": "skipped", "error": None, "seconds": None} for name in PARTS},
    }
    write_json(report, out)
    todo = list(args.parts)
    for name in list(todo):
        now = time.perf_counter()
        left_shares = sum(SHARES[p] for p in todo)
        deadline = now + (end - now) * SHARES[name] / left_shares  # unused time rolls over
        todo.remove(name)
        print(f"gpu_check: {name} ({deadline - now:.0f} s)", flush=True)
        try:
            numbers = RUNNERS[name](device, args.dry_run, deadline)
            entry = {"status": "ok", "error": None, **numbers}
        except Exception as error:
            traceback.print_exc()
            entry = {"status": "error", "error": one_line(error)}
        entry["seconds"] = time.perf_counter() - now
        report["parts"][name] = entry
        report["wall_s"] = time.perf_counter() - start
        write_json(report, out)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    problems = check_schema(report)
    report["schema_problems"] = problems
    write_json(report, out)
    print(summary(report))
    if problems:
        print(f"gpu_check: schema problems: {'; '.join(problems)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
