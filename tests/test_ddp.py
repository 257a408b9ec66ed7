"""Data-parallel training of every paradigm, multi-node launching, and files that nodes share.

Every row of tests/test_contract.py (``GENERATIVE`` and ``AUTOENCODERS``) trains on two CPU (gloo)
DDP ranks (``ddp_paradigms_script.py``: one forked pair of processes trains all rows in turn) and on
one process on the union of the ranks' batches. Per row: the ranks see different examples and draw
different noise, which together are the single process's; DDP keeps their gradients, weights and
buffers equal and rank 0's checkpoint holds them; the gradients equal the single process's where
the loss is a mean over the batch and nothing normalises with batch statistics
(``ddp_paradigms_script.NOT_EXACT`` says where not, and why), and so does the validation loss,
everywhere. The GAN's batch-norm statistics are the ranks' average. The same matrix, one process
group per row and two epochs, is ``slow``.

Multi-node: two "nodes" on this machine (one process each, ``NODE_RANK`` 0 and 1, torchrun's
environment variables) train through the real command line. Shared folders: two processes writing
the same feature cache, token file or data set download at once leave one whole file, and a reader
never sees a partial one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from ddp_nodes_script import Characters, expected_tokens, run_two_nodes, slow_documents
from ddp_paradigms_script import (
    FIRST_STEP_ONLY,
    NOT_EXACT,
    ROWS,
    STEPS,
    WORLD,
    data_of,
    free_port,
    reference,
    run,
)
from helpers import TINY_CLI_TRAINER, run_cli
from test_cli import TINY
from torch import Tensor
from torch.utils.data import DistributedSampler

from lit_genai.atomic import PARTIAL_SUFFIX
from lit_genai.data.images import TorchvisionDataModule
from lit_genai.data.token_file import TokenFile, write_token_file
from lit_genai.metrics.cache import real_features

ROOT = Path(__file__).resolve().parents[1]
Record = dict[str, Any]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ae_checkpoint) -> tuple[Path, dict[str, list[Record]], dict[str, Record]]:
    """Every row on two ranks (one process group), and on one process: (folder, {row: [rank 0's
    record, rank 1's]}, {row: the single process's record})."""
    out = tmp_path_factory.mktemp("ddp")
    by_rank = run(ROWS, out, ae_checkpoint)
    ranks = {row: [by_rank[r][row] for r in range(WORLD)] for row in ROWS}
    single = {row: reference(row, ranks[row], ae_checkpoint, out / row / "one") for row in ROWS}
    return out, ranks, single


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    # The ranks' all-reduced mean and one process's mean add the same numbers in another order.
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6, msg=lambda m: f"{what}: {m}")


def _stack(batches: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Batches of (x, y, ...) -> (all x, all y, ...)."""
    return [torch.cat(parts) for parts in zip(*batches, strict=True)]


def _max_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)) for k in a)


# ---------------------------------------------------------------------- checks of one row


def check_data_and_draws(row: str, ranks: list[Record], single: Record) -> None:
    """The ranks' batches are disjoint shards of the data (Lightning's shuffled DistributedSampler)
    that together cover it; their ``this_rank`` draws differ and, stacked, are the single process's."""
    train, _ = data_of(row)
    seen = []
    for r, record in enumerate(ranks):
        shard = list(DistributedSampler(train, num_replicas=WORLD, rank=r, shuffle=True, seed=0))  # epoch 0
        assert len(record["train"]) >= STEPS, row
        for got, want in zip(_stack(record["train"][:STEPS]), train[shard], strict=True):
            assert torch.equal(got, want), f"{row}: rank {r} did not train on its shard of the data"
        seen += shard
    assert sorted(seen) == list(range(len(train))), f"{row}: the ranks' shards overlap or leave examples out"
    draws = [record["draws"] for record in ranks]
    assert len(draws[0]) == len(draws[1]) == len(single["draws"]), row
    for i, (a, b, one) in enumerate(zip(*draws, single["draws"], strict=True)):
        assert torch.equal(torch.cat([a, b]), one), f"{row}: draw {i} is not a slice of the world's draw"
        if a.is_floating_point():  # integer draws (labels, timesteps) of a few rows may coincide
            assert not torch.equal(a, b), f"{row}: both ranks drew the same noise (draw {i})"


def check_ranks_agree(row: str, ranks: list[Record], checkpoint: Path) -> None:
    """DDP's all-reduce gives every rank the same gradients, hence the same weights and buffers,
    and the checkpoint rank 0 wrote holds them."""
    grads = [record["grads"] for record in ranks]
    assert len(grads[0]) == len(grads[1]) >= STEPS, row
    for step, (a, b) in enumerate(zip(*grads, strict=True)):
        assert a.keys() == b.keys() and a, f"{row}: optimiser step {step} updates other parameters"
        for name in a:
            assert torch.equal(a[name], b[name]), f"{row}: step {step}: the ranks' gradients of {name} differ"
    states = [record["state"] for record in ranks]
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert states[0].keys() == states[1].keys() == saved.keys(), row
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), f"{row}: the ranks' {name} differ"
        assert torch.equal(saved[name], states[0][name]), f"{row}: the checkpoint's {name} is not the ranks'"


def check_union(row: str, ranks: list[Record], single: Record) -> None:
    """The first step's gradients (and, beyond ``FIRST_STEP_ONLY``, every step's, the final
    weights and the validation after training) equal one process's on the union batch, except
    where ``NOT_EXACT`` says why not; there they differ, so a row that becomes exact must leave it."""
    first, one = ranks[0]["grads"][0], single["grads"][0]
    assert first.keys() == one.keys(), row
    if row in NOT_EXACT:
        gap = _max_gap(first, one)
        assert gap > 1e-3, f"{row} is now exact (gap {gap:.1e}): remove it from NOT_EXACT"
        return
    for name in first:
        _close(first[name], one[name], f"{row}: the first step's gradient of {name}")
    if row in FIRST_STEP_ONLY:
        return
    assert len(ranks[0]["grads"]) == len(single["grads"]), row
    for step, (a, b) in enumerate(zip(ranks[0]["grads"], single["grads"], strict=True)):
        for name in a:
            _close(a[name], b[name], f"{row}: step {step}'s gradient of {name}")
    for name, value in single["state"].items():
        if value.is_floating_point():
            _close(ranks[0]["state"][name], value, f"{row}: the trained {name}")
    assert ranks[0]["fit"].keys() >= {k for k in single["fit"] if k.startswith("val/")}, row
    for key, value in single["fit"].items():
        if key.startswith("val/"):
            assert ranks[0]["fit"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), f"{row}: {key} after fit"


def check_validation(row: str, ranks: list[Record], single: Record) -> None:
    """The validation of the initial weights logs the same numbers on both ranks as one process
    does on the same examples (``sync_dist``, the split's sums reduced over the ranks, per-rank
    evaluation draws)."""
    metrics = [record["validate"] for record in ranks]
    assert metrics[0] == metrics[1], row
    assert "val/loss" in single["validate"], row
    assert metrics[0].keys() == single["validate"].keys(), row
    for key, value in single["validate"].items():
        assert metrics[0][key] == pytest.approx(value, rel=1e-5, abs=1e-6), f"{row}: {key}"


# ---------------------------------------------------------------------- every row, one process group


@pytest.mark.parametrize("row", ROWS)
def test_ranks_see_their_shard_and_draw_their_slice_of_the_noise(trained, row):
    _, ranks, single = trained
    check_data_and_draws(row, ranks[row], single[row])


@pytest.mark.parametrize("row", ROWS)
def test_ranks_keep_equal_weights_and_rank_0_saves_them(trained, row):
    out, ranks, _ = trained
    check_ranks_agree(row, ranks[row], out / row / "last.ckpt")


@pytest.mark.parametrize("row", ROWS)
def test_gradients_equal_one_process_on_the_union_batch(trained, row):
    _, ranks, single = trained
    check_union(row, ranks[row], single[row])


@pytest.mark.parametrize("row", ROWS)
def test_validation_metrics_equal_one_process_on_the_same_data(trained, row):
    _, ranks, single = trained
    check_validation(row, ranks[row], single[row])


def _running_statistics(calls: list[tuple[torch.Tensor, torch.Tensor]], momentum: float = 0.1):
    """BatchNorm2d's running mean and variance after the batch statistics ``calls`` (mean, unbiased
    variance), from their initial 0 and 1."""
    mean, var = torch.zeros_like(calls[0][0]), torch.ones_like(calls[0][1])
    for batch_mean, batch_var in calls:
        mean = (1 - momentum) * mean + momentum * batch_mean
        var = (1 - momentum) * var + momentum * batch_var
    return mean, var


def test_the_gan_checkpoint_holds_the_ranks_averaged_batch_norm_statistics(trained):
    # DDP's broadcast_buffers copies rank 0's buffers to every rank at each forward, so unaveraged,
    # rank 0's checkpoint would hold the statistics of rank 0's batches alone.
    out, ranks, _ = trained
    saved = torch.load(out / "gan-dcgan" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    norms = [record["norms"] for record in ranks["gan-dcgan"]]
    assert norms[0] and norms[0].keys() == norms[1].keys()
    for layer in norms[0]:
        calls = [
            (torch.stack([m0, m1]).mean(0), torch.stack([v0, v1]).mean(0))
            for (m0, v0), (m1, v1) in zip(norms[0][layer], norms[1][layer], strict=True)
        ]
        assert len(calls) >= STEPS, layer
        mean, var = _running_statistics(calls)  # linear in the calls: averaging per step = per call
        _close(saved[f"{layer}.running_mean"], mean, f"{layer}.running_mean")
        _close(saved[f"{layer}.running_var"], var, f"{layer}.running_var")
        rank0_mean, _ = _running_statistics(norms[0][layer])
        assert not torch.allclose(saved[f"{layer}.running_mean"], rank0_mean, rtol=1e-4, atol=1e-6), layer


# ---------------------------------------------------------------------- every row, its own group


@pytest.mark.slow
@pytest.mark.parametrize("row", ROWS)
def test_each_row_for_two_epochs_on_its_own_process_group(row, tmp_path, ae_checkpoint):
    ranks = [by_rank[row] for by_rank in run((row,), tmp_path, ae_checkpoint, epochs=2)]
    single = reference(row, ranks, ae_checkpoint, tmp_path / "one", epochs=2)
    check_data_and_draws(row, ranks, single)
    check_ranks_agree(row, ranks, tmp_path / row / "last.ckpt")
    check_union(row, ranks, single)
    check_validation(row, ranks, single)


# ---------------------------------------------------------------------- nodes


@pytest.mark.parametrize("per_node", [True, False])
def test_prepare_data_runs_once_per_node_and_every_rank_reads_the_whole_file(tmp_path, per_node):
    # Two nodes of one device: each is local rank 0 of its node, and they share tmp_path.
    run_two_nodes(tmp_path, per_node)
    prepared = sorted(p.name for p in tmp_path.glob("prepared-node*"))
    assert prepared == (["prepared-node0", "prepared-node1"] if per_node else ["prepared-node0"])
    assert sorted(p.name for p in tmp_path.glob("trained-rank*")) == ["trained-rank0", "trained-rank1"]
    assert np.array_equal(np.fromfile(tmp_path / "tokens.bin", dtype=np.uint16), expected_tokens())
    assert not list(tmp_path.glob(f".*{PARTIAL_SUFFIX}"))


def _launch_nodes(tmp_path: Path, args: list[str], torchrun: bool) -> list[str]:
    """``lit-genai <args>`` as node 0 and node 1 of a two-node job on this machine, one process
    each, through ``torchrun`` or started directly with ``MASTER_ADDR``, ``MASTER_PORT``,
    ``WORLD_SIZE``, ``NODE_RANK`` and ``LOCAL_RANK`` set; the two outputs (both must succeed)."""
    port = str(free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SLURM_"))}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    nodes = []
    for node in range(2):
        if torchrun:
            launcher = [
                str(Path(sys.executable).with_name("torchrun")),
                "--nnodes",
                "2",
                "--node-rank",
                str(node),
            ]
            launcher += ["--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", port]
            node_env = env
        else:
            launcher = [sys.executable]
            node_env = {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2"}
            node_env.update(NODE_RANK=str(node), LOCAL_RANK="0")
        command = [*launcher, "-m", "lit_genai", *args, "--trainer.num_nodes", "2", "--trainer.devices", "1"]
        nodes.append(
            subprocess.Popen(
                command,
                cwd=tmp_path,
                env=node_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-3000:]
    return outputs


@pytest.mark.slow
def test_two_nodes_train_and_resume_through_the_command_line(tmp_path):
    # Node 0 and node 1 share tmp_path as a cluster's nodes share a network file system.
    run, reports = tmp_path / "run", tmp_path / "reports"
    tiny = {
        "model": TINY["model"],
        "data": {"init_args": {"batch_size": 8}},
        "samples": {"num_samples": 4},
        "trainer": {
            **TINY_CLI_TRAINER,
            "accelerator": "cpu",
            "default_root_dir": str(run),
            "callbacks": [
                {"class_path": "ddp_nodes_script.NodeReport", "init_args": {"folder": str(reports)}}
            ],
        },
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    config = ["--config", str(ROOT / "experiments" / "diffusion" / "mnist.yaml"), "--config", "tiny.yaml"]

    def ranks() -> list[dict[str, Any]]:
        return [json.loads((reports / f"rank{r}.json").read_text()) for r in range(2)]

    _launch_nodes(tmp_path, ["fit", *config], torchrun=False)
    first = ranks()
    assert [(r["global_rank"], r["node_rank"], r["local_rank"]) for r in first] == [(0, 0, 0), (1, 1, 0)]
    assert all(r["world_size"] == 2 and r["num_nodes"] == 2 for r in first)
    assert {r["environment"] for r in first} == {"LightningEnvironment"}
    assert first[0]["first_labels"] != first[1]["first_labels"]  # each node its shard of the data
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == first[0]["global_step"] == TINY_CLI_TRAINER["max_steps"]

    # Resume on both nodes: each resolves `last` in the shared folder; torchrun's variables this time.
    steps = TINY_CLI_TRAINER["max_steps"] + 2
    _launch_nodes(tmp_path, ["fit", *config, "--trainer.max_steps", str(steps), "--ckpt_path", "last"], True)
    again = ranks()
    assert {r["environment"] for r in again} == {"TorchElasticEnvironment"}
    assert [r["global_step"] for r in again] == [steps, steps]
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == steps


def _tiny_config(tmp_path: Path) -> list[str]:
    """The demo at test size, run in ``tmp_path / "run"``: its ``--config`` arguments."""
    tiny = {"trainer": {**TINY_CLI_TRAINER, "default_root_dir": str(tmp_path / "run")}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    return [
        "--config",
        str(ROOT / "experiments" / "diffusion" / "mnist.yaml"),
        "--config",
        str(tmp_path / "tiny.yaml"),
    ]


def test_ckpt_path_hpc_without_a_requeue_checkpoint_is_one_line(tmp_path, capsys):
    assert run_cli(["fit", *_tiny_config(tmp_path), "--ckpt_path", "hpc"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("lit-genai: error: --ckpt_path hpc: no hpc_ckpt_<n>.ckpt in ") and "run" in err


def test_ckpt_path_hpc_takes_the_highest_requeue_checkpoint_and_checks_it(tmp_path, capsys):
    # What Lightning's SLURM requeue writes into the run folder: hpc_ckpt_<n>.ckpt, n counting up.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "hpc_ckpt_9.ckpt").write_bytes(b"not a checkpoint")
    (tmp_path / "run" / "hpc_ckpt_10.ckpt").write_bytes(b"PK\x03\x04 and then the save was killed")
    assert run_cli(["fit", *_tiny_config(tmp_path), "--ckpt_path", "hpc"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "hpc_ckpt_10.ckpt: truncated or corrupt checkpoint" in err  # 10, not 9: numbers, not names


# ---------------------------------------------------------------------- files that processes share

FORK = mp.get_context("fork")


def _write_at_once(target: Path, write: Callable[[], None], check: Callable[[Path], None]) -> None:
    """Two processes run ``write`` at the same moment while a third ``check``s ``target`` whenever it
    exists; afterwards ``target`` must pass ``check`` and no temporary file may be left."""
    start, done, errors = FORK.Barrier(3), FORK.Event(), FORK.Queue()

    def writer() -> None:
        start.wait()
        write()

    def reader() -> None:
        start.wait()
        while not done.is_set():
            if target.exists():
                try:
                    check(target)
                except Exception as error:  # a partial or broken file: the test fails with it
                    errors.put(f"a reader saw {target.name} unfinished: {error!r}")
                    return
            time.sleep(0.001)

    writers = [FORK.Process(target=writer) for _ in range(2)]
    watcher = FORK.Process(target=reader)
    for process in [*writers, watcher]:
        process.start()
    for process in writers:
        process.join(120)
    done.set()
    watcher.join(120)
    assert [p.exitcode for p in writers] == [0, 0]
    assert errors.empty(), errors.get()
    check(target)
    assert not list(target.parent.glob(f".*{PARTIAL_SUFFIX}")), "a temporary file was left behind"


def test_two_processes_writing_one_token_file_leave_it_whole(tmp_path):
    target = tmp_path / ".lit_genai_tokens" / "stream.bin"

    def check(path: Path) -> None:
        assert np.array_equal(TokenFile(path)[:].numpy(), expected_tokens())

    _write_at_once(target, lambda: write_token_file(target, Characters(), slow_documents()), check)


class SlowFeatures(torch.nn.Module):
    """A feature extractor of what ``real_features`` reads (``name``, ``num_features``): a fixed
    projection of the pixels, slow enough for two processes to overlap."""

    name, num_features = "slow", 2048

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3 * 8 * 8, self.num_features)

    def forward(self, images: Tensor) -> Tensor:  # (B, 3, 8, 8) uint8 -> (B, D)
        time.sleep(0.02)
        return self.proj(images.flatten(1).float() / 255)


def test_two_processes_writing_one_feature_cache_leave_it_whole(tmp_path):
    torch.manual_seed(0)
    images, extractor = torch.rand(256, 3, 8, 8) * 2 - 1, SlowFeatures()
    options = dict(dataset="Toy", split="train", num=256, progress=False, batch_size=16)
    expected = real_features(images, extractor, cache=False, **options)  # (256, 2048): 2 MB on disk

    def check(path: Path) -> None:
        assert torch.equal(torch.load(path, weights_only=True)["features"], expected)

    write = lambda: real_features(images, extractor, cache_dir=tmp_path, **options)  # noqa: E731
    _write_at_once(tmp_path / "Toy-train-slow-256.pt", write, check)


class SlowDownload:
    """A torchvision data set whose ``download=True`` writes two files chunk by chunk under
    ``<root>/Slow/raw`` (as MNIST's under ``<root>/MNIST/raw``)."""

    files = {"images.bin": b"I" * 4096, "labels.bin": b"L" * 4096}

    def __init__(self, root: str, train: bool = True, download: bool = False, transform: Any = None) -> None:
        raw = Path(root) / "Slow" / "raw"
        if download and not raw.is_dir():
            raw.mkdir(parents=True)
            for name, content in self.files.items():
                with open(raw / name, "wb") as out:
                    for i in range(0, len(content), 512):
                        out.write(content[i : i + 512])
                        out.flush()
                        time.sleep(0.005)


class SlowImages(TorchvisionDataModule):
    dataset_cls, title, folder, shape = SlowDownload, "Slow", "Slow/raw", (1, 8, 8)


def test_two_nodes_downloading_one_torchvision_set_leave_one_whole_folder(tmp_path):
    # Both nodes' prepare_data download into the shared root (prepare_data_per_node).
    def check(raw: Path) -> None:
        assert {p.name: p.read_bytes() for p in raw.iterdir()} == SlowDownload.files

    data = SlowImages(root=str(tmp_path), download=True)
    _write_at_once(tmp_path / "Slow" / "raw", data.prepare_data, check)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Slow"]
