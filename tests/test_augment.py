"""``lit-genai augment``: the counting of the sweep, the held-out test set, the intervals, the files.

The sweep runs with a recording fake trainer on marked images (each image's first pixel is its id),
so that what each cell trains on is known exactly; the command runs once end to end on a tiny
class-conditional DCGAN built here and saved as a run folder (``lit_genai.api.load`` reads it).
"""

import json
import math

import pytest
import torch
import yaml
from helpers import run_cli
from torch import nn

from lit_genai.augment import Images, Training, run_sweep, summarise, t_interval
from lit_genai.augment.command import sampling_options
from lit_genai.augment.report import markdown_table
from lit_genai.gan import GAN
from lit_genai.nn.dcgan import DCGANDiscriminator, DCGANGenerator

K = 3
REAL, SYNTHETIC, TEST = 1000, 2000, 3000  # id offsets of the three sets' images


def _marked(offset: int, per_class: int) -> Images:
    """per_class images of each of K classes, (N, 1, 4, 4); image i's first pixel is offset + i."""
    labels = torch.arange(K).repeat_interleave(per_class)  # (N,)
    images = torch.zeros(len(labels), 1, 4, 4)
    images[:, 0, 0, 0] = offset + torch.arange(len(labels)).float()
    return Images(images, labels, f"marked {offset}")


class _Always(nn.Module):
    """A 'classifier' that says class 0 for every image."""

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), K).float()


def _sweep(**kwargs):
    """A sweep on marked images with a fake trainer; returns (rows, what each call trained on)."""
    trained = []

    def train(x, y, num_classes, *, steps, seed, **options):
        trained.append(
            {"ids": x[:, 0, 0, 0].long().tolist(), "labels": y.tolist(), "steps": steps, "seed": seed}
        )
        return _Always()

    settings = dict(
        real_per_class=[2, 5], ratios=[0, 1, 2], seeds=[0, 1], training=Training(epochs=1, min_steps=1)
    )
    rows = run_sweep(
        _marked(REAL, 8),
        {"model": _marked(SYNTHETIC, 10)},
        _marked(TEST, 4),
        num_classes=K,
        train=train,
        log=lambda line: None,
        **{**settings, **kwargs},
    )
    return rows, trained


def test_each_cell_trains_on_r_real_and_q_r_synthetic_images_per_class_never_a_test_image():
    rows, trained = _sweep()
    assert len(rows) == len(trained) == 2 * 3 * 2  # one row per cell: r x q x seeds
    for row, call in zip(rows, trained, strict=True):
        r, q = row["real_per_class"], row["ratio"]
        ids, labels = torch.tensor(call["ids"]), torch.tensor(call["labels"])
        real, synthetic = (ids >= REAL) & (ids < SYNTHETIC), (ids >= SYNTHETIC) & (ids < TEST)
        assert not (ids >= TEST).any()  # the held-out images are never trained on
        assert torch.bincount(labels[real], minlength=K).tolist() == [r] * K == row["real_counts"]
        assert (
            torch.bincount(labels[synthetic], minlength=K).tolist() == [q * r] * K == row["synthetic_counts"]
        )
        assert len(set(call["ids"])) == len(ids) == row["train_size"]  # no image twice
        assert call["seed"] == row["seed"]


def test_cells_of_a_row_share_steps_and_real_images_and_are_nested():
    rows, trained = _sweep()

    def real_ids(r, q, seed):
        (i,) = [
            i
            for i, row in enumerate(rows)
            if (row["real_per_class"], row["ratio"], row["seed"]) == (r, q, seed)
        ]
        return {j for j in trained[i]["ids"] if j < SYNTHETIC}, trained[i]["steps"]

    for seed in (0, 1):
        for r in (2, 5):
            (ids, steps), *others = [real_ids(r, q, seed) for q in (0, 1, 2)]
            assert all(other == (ids, steps) for other in others)  # paired: same real images, same steps
        assert real_ids(2, 0, seed)[0] < real_ids(5, 0, seed)[0]  # nested: 2 per class within 5
    assert real_ids(5, 0, 0)[0] != real_ids(5, 0, 1)[0]  # the seed changes the draw
    # equal steps: epochs 1 over the largest mix r * K * 3 (q = 2) = 45 images, batch 64 -> 1 step
    assert {row["steps"] for row in rows} == {Training(epochs=1, min_steps=1).steps(5, K, 2)} == {1}


def test_real_only_cells_are_shared_between_models_and_reused():
    rows, trained = _sweep(real_per_class=[2], ratios=[0, 1], seeds=[0])
    assert len(trained) == 2
    done, calls = {}, []

    def train(x, y, num_classes, **options):
        calls.append(len(y))
        return _Always()

    pools = {"a": _marked(SYNTHETIC, 10), "b": Images(*_marked(SYNTHETIC, 10)[:2], "another model")}
    kwargs = dict(real_per_class=[2], ratios=[0, 1], seeds=[0], training=Training(), num_classes=K)
    rows = run_sweep(
        _marked(REAL, 8), pools, _marked(TEST, 4), train=train, on_cell=done.__setitem__, **kwargs
    )
    assert [row["model"] for row in rows] == ["a", "a", "b", "b"]
    assert calls == [2 * K, 4 * K, 4 * K]  # b's real-only cell is a's
    again = run_sweep(_marked(REAL, 8), pools, _marked(TEST, 4), train=train, done=done, **kwargs)
    assert again == rows and len(calls) == 3  # every cell known: nothing trained
    kwargs["training"] = Training(epochs=2)  # other epochs, the same steps (min_steps): the same cells
    assert run_sweep(_marked(REAL, 8), pools, _marked(TEST, 4), train=train, done=done, **kwargs) == rows
    assert len(calls) == 3


def test_accuracies_are_scored_on_the_test_images():
    rows, _ = _sweep(real_per_class=[2], ratios=[0], seeds=[0])
    test = _marked(TEST, 4)
    assert rows[0]["accuracy"] == pytest.approx(float((test.labels == 0).float().mean()))  # 'always 0'
    assert rows[0]["per_class_accuracy"] == [1.0, 0.0, 0.0]


def test_t_interval_and_paired_gain_of_known_numbers():
    mean, half = t_interval([0.90, 0.92, 0.94])
    assert mean == pytest.approx(0.92)
    assert half == pytest.approx(4.302652729749464 * 0.02 / math.sqrt(3))  # t(0.975, 2) s / sqrt(3)
    assert t_interval([0.5]) == (0.5, None)
    accuracies = {0: [0.90, 0.80, 0.70], 1: [0.92, 0.83, 0.71]}  # paired differences 0.02, 0.03, 0.01
    rows = [
        {
            "model": "m",
            "real_per_class": 10,
            "ratio": q,
            "seed": seed,
            "accuracy": accuracies[q][seed],
            "real_counts": [10] * K,
            "synthetic_counts": [10 * q] * K,
            "steps": 7,
            "per_class_accuracy": [accuracies[q][seed], 1.0, None],
        }
        for q in (0, 1)
        for seed in range(3)
    ]
    real_only, mixed = summarise(rows)
    assert real_only["gain"] is None and mixed["accuracy"] == pytest.approx(0.82)
    assert mixed["gain"] == pytest.approx(0.02)
    assert mixed["gain_ci"] == pytest.approx(4.302652729749464 * 0.01 / math.sqrt(3))
    assert mixed["per_class_accuracy"] == [pytest.approx(0.82), 1.0, None]
    table = markdown_table([real_only, mixed]).splitlines()
    assert len(table) == 2 + 2  # header, rule, one row per (r, q) cell
    assert table[3].startswith("| 10 | 1 | 10 | 7 | 82.0 ± ") and "| +2.0 ± 2.5 |" in table[3]


def _save_tiny_conditional_gan(folder):
    """A tiny class-conditional DCGAN of 10 digit classes (the contract test's sizes), saved as a run
    folder: config.yaml + checkpoints/last.ckpt."""
    net_g = {"latent_dim": 8, "out_channels": 1, "image_size": 28, "base_channels": 4, "num_classes": 10}
    net_d = {"in_channels": 1, "image_size": 28, "base_channels": 4, "num_classes": 10}
    module = GAN(
        DCGANGenerator(**net_g), DCGANDiscriminator(**net_d), sample_shape=(1, 28, 28), num_classes=10
    )
    model = {
        "class_path": "lit_genai.gan.GAN",
        "init_args": {
            "net_g": {"class_path": "lit_genai.nn.DCGANGenerator", "init_args": net_g},
            "net_d": {"class_path": "lit_genai.nn.DCGANDiscriminator", "init_args": net_d},
            "sample_shape": [1, 28, 28],
            "num_classes": 10,
        },
    }
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": model}))
    torch.save({"state_dict": module.state_dict()}, folder / "checkpoints" / "last.ckpt")
    return folder


def test_command_writes_table_json_plot_and_pool_and_resumes(tmp_path):
    run = _save_tiny_conditional_gan(tmp_path / "runs" / "tiny-gan")
    out = tmp_path / "augment"
    args = [
        "augment",
        "--ckpt",
        str(run),
        "--real_per_class",
        "2",
        "3",
        "--ratios",
        "0",
        "2",
        "--seeds",
        "0",
        "1",
    ]
    args += ["--epochs", "1", "--min_steps", "2", "--batch_size", "16", "--width", "4", "--output", str(out)]
    assert run_cli(args) == 0
    report = json.loads((out / "augment.json").read_text())
    assert len(report["cells"]) == 2 * 2 * 2 and len(report["summary"]) == 2 * 2
    assert "Student t" in report["interval"]
    assert {tuple(c["synthetic_counts"]) for c in report["cells"]} == {(0,) * 10, (4,) * 10, (6,) * 10}
    table = (out / "augment.md").read_text()
    assert "## tiny-gan" in table and table.count("\n| ") == 1 + 4  # header + one row per (r, q)
    assert (out / "tiny-gan.png").read_bytes()[:4] == b"\x89PNG"
    pool = torch.load(out / "tiny-gan.pool.pt", weights_only=True)["images"]
    assert pool.shape == (6 * 10, 1, 28, 28) and pool.dtype == torch.uint8  # max q * r per class
    trained = (out / "cells.jsonl").read_text()
    assert run_cli(args) == 0  # a rerun trains no cell again
    assert (out / "cells.jsonl").read_text() == trained


def test_bad_options_are_one_line(tmp_path, capsys):
    run = _save_tiny_conditional_gan(tmp_path / "runs" / "tiny-gan")
    bad_options = (
        ["--ratios", "-1"],
        ["--real_per_class", "1000"],
        ["--sampling", "steps"],
        ["--epochs", "x"],
    )
    for bad in (*bad_options, ["--sampling", "other-run:steps=2"], ["--sampling", "truncation=x"]):
        assert run_cli(["augment", "--ckpt", str(run), "--output", str(tmp_path / "out"), *bad]) == 1
        err = capsys.readouterr().err
        assert err.startswith("lit-genai: error: ") and err.count("\n") == 1, err


def test_sampling_options_apply_to_every_run_or_the_named_one():
    items = ["steps=10", "diffusion-mnist:guidance_scale=2.5", "gan:truncation=null"]
    models = ["diffusion-mnist", "gan"]
    assert sampling_options(items, "diffusion-mnist", models) == {"steps": 10, "guidance_scale": 2.5}
    assert sampling_options(items, "gan", models) == {"steps": 10, "truncation": None}
