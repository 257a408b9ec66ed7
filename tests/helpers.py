"""Shared test scaffolding: a quiet Trainer, the tiny conditional diffusion model, CLI overrides."""

import os

import torch
from lightning.pytorch import Trainer

from lit_genai.diffusion import Diffusion, DiffusionSampling
from lit_genai.nn import UNet

# The trainer part of the tiny CLI overrides: a few steps, a tiny validation, CSV logs, no bars.
TINY_CLI_TRAINER = {
    "max_steps": 4,
    "limit_train_batches": 2,
    "limit_val_batches": 1,
    "num_sanity_val_steps": 0,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger"},
}


def quiet_trainer(root, callbacks=(), **kwargs) -> Trainer:
    """A Trainer writing nothing but what a test asks for: no logger, checkpoints, bars or sanity check."""
    defaults = dict(
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return Trainer(callbacks=list(callbacks), **{**defaults, **kwargs})


def tiny_conditional_diffusion(**kwargs) -> Diffusion:
    """A class-conditional Diffusion on 1x28x28 images with an 8-channel UNet: seconds, not minutes."""
    net = UNet(
        in_channels=1,
        base_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_levels=(),
        dropout=0.0,
        num_groups=4,
        num_classes=10,
    )
    kwargs.setdefault("sampling", DiffusionSampling(steps=2))
    return Diffusion(net, sample_shape=(1, 28, 28), num_classes=10, num_timesteps=50, **kwargs)


def run_cli(args: list[str]) -> int:
    """``lit-genai <args>`` in this process; its exit code (0 when it returns normally)."""
    import sys
    from unittest import mock

    from lit_genai.cli import main

    try:
        with mock.patch.object(sys, "argv", ["lit-genai"]):
            main(args)
    except SystemExit as exit:
        return exit.code
    return 0


def join_process_group(port: int, world: int, local_rank: int, node_rank: int = 0) -> None:
    """Set what Lightning's ``LightningEnvironment`` reads to put this forked process in a CPU (gloo)
    group of ``world`` ranks on 127.0.0.1:``port``; one torch thread, as the test processes use."""
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        NODE_RANK=str(node_rank),
        LOCAL_RANK=str(local_rank),
    )
