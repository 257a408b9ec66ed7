"""Two "nodes" of one process each on this machine, for tests/test_ddp.py.

``NodeReport`` is a callback for the command line (``trainer.callbacks: [{class_path:
ddp_nodes_script.NodeReport, init_args: {folder: ...}}]``, with this folder on ``PYTHONPATH``):
every rank writes ``<folder>/rank<global rank>.json`` at the end of ``fit``, saying where it was.

``run_two_nodes(folder, per_node)`` forks two processes that join as node 0 and node 1 of a
``num_nodes=2, devices=1`` job (``NODE_RANK``, ``LOCAL_RANK=0``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``: an externally launched job to Lightning) and fit a one-parameter model on
``SharedTokens``, whose ``prepare_data`` writes one token file into ``folder``, shared by both nodes
as a cluster's network file system would be. Lightning calls ``prepare_data`` on local rank 0 of
every node (``prepare_data_per_node = True``, the default) or on global rank 0 alone (False), with a
barrier after it; each call leaves ``prepared-node<n>`` behind, and every rank's ``setup`` reads
the file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.multiprocessing as mp
from ddp_paradigms_script import free_port
from helpers import join_process_group
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lit_genai.data.token_file import TokenFile, write_token_file


class NodeReport(Callback):
    """Writes ``<folder>/rank<r>.json`` per rank at the end of ``fit``: its global, node and local
    rank, the world size and number of nodes, its cluster environment, the labels of its first
    training batch and the global step it reached.

    Args:
        folder: Where the reports go (one folder that every node sees).
    """

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.first_labels: Optional[list[int]] = None

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.first_labels is None:
            self.first_labels = batch[1].tolist()  # (B,) the images' labels

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        report = {
            "global_rank": trainer.global_rank,
            "node_rank": trainer.node_rank,
            "local_rank": trainer.local_rank,
            "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "environment": type(trainer.strategy.cluster_environment).__name__,
            "first_labels": self.first_labels,
            "global_step": trainer.global_step,
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


# ---------------------------------------------------------------------- a shared token file

DOCUMENTS = [f"document {i} " * 20 for i in range(40)]


class Characters:
    """The two things ``write_token_file`` asks of a tiktoken encoding, over characters."""

    eot_token = 0

    def encode_ordinary(self, text: str) -> list[int]:
        return [ord(c) for c in text]


def expected_tokens() -> np.ndarray:
    """The stream of ``DOCUMENTS``: each document's characters, then the end-of-text token."""
    return np.concatenate([[*map(ord, d), Characters.eot_token] for d in DOCUMENTS]).astype(np.uint16)


def slow_documents(pause: float = 0.005) -> Iterator[str]:
    """``DOCUMENTS``, one every ``pause`` seconds: a writer that takes long enough for another
    process to write or read the same file meanwhile."""
    for document in DOCUMENTS:
        time.sleep(pause)
        yield document


class SharedTokens(LightningDataModule):
    """Token windows of one file that ``prepare_data`` writes into a folder every node shares.

    Args:
        folder: The shared folder.
        per_node: Lightning's ``prepare_data_per_node``.
    """

    def __init__(self, folder: str, per_node: bool) -> None:
        super().__init__()
        self.folder, self.prepare_data_per_node = Path(folder), per_node

    @property
    def file(self) -> Path:
        return self.folder / "tokens.bin"

    def prepare_data(self) -> None:
        (self.folder / f"prepared-node{self.trainer.node_rank}").touch()
        write_token_file(self.file, Characters(), slow_documents())

    def setup(self, stage: str) -> None:
        tokens = TokenFile(self.file)[:]  # (N,) int64; the barrier after prepare_data let it exist
        assert torch.equal(tokens, torch.from_numpy(expected_tokens().astype(np.int64))), "a partial file"
        self.windows = tokens[: len(tokens) // 8 * 8].view(-1, 8).float()  # (N / 8, 8)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.windows), batch_size=4)


class Mean(LightningModule):
    """One parameter fitted to the windows' mean: something to train."""

    def __init__(self) -> None:
        super().__init__()
        self.mean = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        return (batch[0] - self.mean).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def _node(node: int, folder: Path, per_node: bool, port: int) -> None:
    join_process_group(port, 2, local_rank=0, node_rank=node)
    trainer = Trainer(
        accelerator="cpu",
        num_nodes=2,
        devices=1,
        strategy=DDPStrategy(timeout=timedelta(seconds=60)),  # a stuck rank raises, not hangs
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(folder / f"node{node}"),
    )
    trainer.fit(Mean(), datamodule=SharedTokens(str(folder), per_node))
    (folder / f"trained-rank{trainer.global_rank}").touch()


def run_two_nodes(folder: Path, per_node: bool) -> None:
    """Fit on two forked "nodes" sharing ``folder`` (module docstring)."""
    mp.start_processes(_node, args=(folder, per_node, free_port()), nprocs=2, start_method="fork")
