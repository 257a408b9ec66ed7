"""Sharded training (lit_genai/sharding.py): the transformer and DiT recipes under FSDP.

FSDP flattens parameters into 1-D slices, gathers them in every forward pass, and sums gradient
norms over all ranks. Checked here, mostly on one two-rank FSDP run on the CPU (tests/
fsdp_script.py: Lightning's FSDPStrategy, which Lightning 2.6 refuses without a GPU, with that check
and torch's CPU device id set): the weight-decay groups are the plain module's; clipping by norm
works and the weights equal one process's on the union batch; sample grids, latent grids and the
evaluation draw on every rank without waiting forever; the EMA callback and the GAN refuse sharding
with one line; the documented FSDP command for the GPT recipe runs.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import fsdp_script
import pytest
import torch
import yaml
from helpers import TINY_CLI_TRAINER, run_cli
from lightning.pytorch.strategies import DeepSpeedStrategy
from test_cli import SHAKESPEARE_ALPHABET
from test_contract import GENERATIVE

from lit_genai import sharding
from lit_genai.errors import ConfigError
from lit_genai.token_models import decay_parameter_names, parameter_groups

ROOT = Path(__file__).resolve().parents[1]
TOKEN_ROWS = ("gpt-text", "masked-text", "pixelcnn-pixels", "wavenet-audio", "diffusion-dit")


def _net(row: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return GENERATIVE[row][1](None)[0].net


def _by_shape(net: torch.nn.Module) -> tuple[list[str], list[str]]:
    """The former rule (nanoGPT's ``p.dim() >= 2``, embeddings excepted), for unflattened nets."""
    embeddings = {id(m.weight) for m in net.modules() if isinstance(m, torch.nn.Embedding)}
    decay = [n for n, p in net.named_parameters() if p.dim() >= 2 and id(p) not in embeddings]
    return decay, [n for n, _ in net.named_parameters() if n not in decay]


# ---------------------------------------------------------------------- weight-decay groups


@pytest.mark.parametrize("row", TOKEN_ROWS)
def test_decay_groups_are_chosen_by_layer_and_name_and_survive_flattening(row):
    net = _net(row)
    groups = decay_parameter_names(net)
    assert groups == _by_shape(net)  # the same choice as before on the plain network
    assert groups[0] and groups[1]
    with torch.no_grad():
        for p in net.parameters():  # what FSDP does to them: 1-D views of a flat slice
            p.data = p.data.reshape(-1)
    assert decay_parameter_names(net) == groups
    assert all(p.dim() == 1 for p in net.parameters())


def test_a_reshaped_weight_keeps_its_group_and_a_tied_embedding_never_decays():
    net = _net("gpt-text")
    decay, no_decay = decay_parameter_names(net)
    assert "transformer.wte.weight" in no_decay  # also the output layer's weight (tied)
    assert "lm_head.weight" not in decay + no_decay  # listed once, under its first name
    weight = net.transformer.h[0].attn.c_attn.weight
    weight.data = weight.data.reshape(-1)
    assert decay_parameter_names(net) == (decay, no_decay)
    by_name = {n: g["weight_decay"] for g in parameter_groups(net, 0.1) for n in g["names"]}
    assert (
        by_name["transformer.h.0.attn.c_attn.weight"] == 0.1 and by_name["transformer.h.0.ln_1.weight"] == 0.0
    )


def test_wrapper_segments_are_dropped_from_parameter_names():
    name = "net.transformer.h.0._fsdp_wrapped_module._checkpoint_wrapped_module.ln_1.weight"
    assert sharding.clean_name(name) == "net.transformer.h.0.ln_1.weight"
    assert sharding.clean_name("_fsdp_wrapped_module.net.x") == "net.x"


def test_sharded_strategies_are_refused_in_one_line():
    deepspeed = DeepSpeedStrategy.__new__(DeepSpeedStrategy)  # without the deepspeed package installed
    with pytest.raises(
        ConfigError, match=r"^X does not work under --trainer.strategy deepspeed \(why\): fix$"
    ):
        sharding.refuse_sharded(SimpleNamespace(strategy=deepspeed), "X", "why", "fix")
    sharding.refuse_sharded(SimpleNamespace(strategy=object()), "X", "why", "fix")  # others pass


# ---------------------------------------------------------------------- two FSDP ranks


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("fsdp")
    return out, fsdp_script.run(out, None)


def test_fsdp_optimiser_groups_on_flat_shards_are_the_plain_modules(fsdp_run):
    _, ranks = fsdp_run
    decay, no_decay = decay_parameter_names(_net("gpt-text"))
    for rank in ranks:
        groups = rank["gpt-text"]["groups"]
        assert [(g["names"], g["weight_decay"]) for g in groups] == [(decay, 0.1), (no_decay, 0.0)]
        assert {len(shape) for g in groups for shape in g["shapes"]} == {1}  # FSDP flattened them


@pytest.mark.parametrize("row", fsdp_script.ROWS)
def test_fsdp_clips_by_the_global_norm_and_equals_one_process(fsdp_run, row, tmp_path):
    # gradient_clip_val by norm under FSDP: Lightning 2.6 alone raises; every step clips (CLIP is small)
    _, ranks = fsdp_run
    records = [rank[row] for rank in ranks]
    assert all(torch.isfinite(torch.tensor(r["losses"])).all() and len(r["losses"]) == 3 for r in records)
    assert records[0]["batches"][0][0].tolist() != records[1]["batches"][0][0].tolist()  # its own data
    expected = fsdp_script.reference(row, records, None, tmp_path)
    gathered = records[0]["state"]  # the full weights FSDP gathered on rank 0
    assert set(gathered) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(gathered[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_sample_grids_are_drawn_on_every_rank_and_written_by_rank_zero(fsdp_run):
    out, ranks = fsdp_run
    for row in fsdp_script.ROWS:
        assert ranks[1][row]["grid"] is None
        assert Path(ranks[0][row]["grid"]).is_file()
        assert [p.name for p in (out / row / "samples").iterdir()] == [Path(ranks[0][row]["grid"]).name]


def test_latent_grids_are_drawn_on_every_rank_and_written_by_rank_zero(fsdp_run):
    _, ranks = fsdp_run
    paths = ranks[0][fsdp_script.AUTOENCODER]["grids"]
    assert set(paths) == {"reconstructions", "interpolations", "traversals"}
    assert all(Path(p).is_file() for p in paths.values())
    assert ranks[1][fsdp_script.AUTOENCODER]["grids"] == {}


def test_evaluation_ranks_make_as_many_sample_calls_when_samples_split_unevenly(fsdp_run):
    _, ranks = fsdp_run
    calls = [rank["evaluation"]["calls"] for rank in ranks]
    assert calls[0] == [8, 1]  # samples 0-7 and 8
    assert calls[1] == [8, 1]  # samples 9-16, then one drawn to keep rank 0 company, discarded
    metrics = [rank["evaluation"]["metrics"] for rank in ranks]
    assert metrics[0] == metrics[1] and torch.isfinite(torch.tensor(metrics[0]["test/fid_mnist"]))


# ---------------------------------------------------------------------- through the command line


def _fsdp_args(monkeypatch, tmp_path) -> list[str]:
    """A one-rank CPU FSDP run in this process (fsdp_script.CPUFSDP ends its process group)."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(fsdp_script.free_port()))
    return [
        "--trainer.strategy.class_path",
        "fsdp_script.CPUFSDP",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
        "--trainer.logger",
        "false",
    ]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_the_ema_callback_refuses_fsdp_in_one_line(monkeypatch, tmp_path, capsys):
    config = str(ROOT / "experiments" / "diffusion" / "mnist.yaml")  # EMA on
    assert run_cli(["fit", "--config", config, *_fsdp_args(monkeypatch, tmp_path)]) == 1
    line = _one_line(capsys)
    assert line.startswith("lit-genai: error: the EMA callback does not work under --trainer.strategy fsdp")
    assert line.endswith("add --ema.enabled false, or use --trainer.strategy ddp")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_gan_refuses_fsdp_in_one_line(monkeypatch, tmp_path, capsys):
    config = str(ROOT / "experiments" / "gan" / "dcgan_mnist.yaml")
    args = ["fit", "--config", config, "--ema.enabled", "false", *_fsdp_args(monkeypatch, tmp_path)]
    assert run_cli(args) == 1
    line = _one_line(capsys)
    assert line.startswith("lit-genai: error: a GAN does not work under --trainer.strategy fsdp")
    assert line.endswith("train it with --trainer.strategy ddp_find_unused_parameters_true")


# The sharded GPT command of the header of experiments/ar/shakespeare_char.yaml, less the GPUs.
OVERRIDE = ["--trainer.strategy.auto_wrap_policy", "[lit_genai.nn.transformer.Block]"]


def test_the_documented_fsdp_command_for_the_gpt_recipe_fits(monkeypatch, tmp_path):
    config = ROOT / "experiments" / "ar" / "shakespeare_char.yaml"
    header = " ".join(line.strip("# \\") for line in config.read_text().splitlines() if line.startswith("#"))
    assert "--trainer.strategy lightning.pytorch.strategies.FSDPStrategy" in header
    assert " ".join(OVERRIDE[:1] + [f"'{OVERRIDE[1]}'"]) in header
    (tmp_path / "tinyshakespeare.txt").write_text(SHAKESPEARE_ALPHABET * 600)  # a stand-in corpus
    tiny = {
        "model": {
            "init_args": {
                "net": {"init_args": {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16}},
                "compile": False,
                "sampling": {"max_new_tokens": 4},
            }
        },
        "data": {
            "init_args": {"root": str(tmp_path), "block_size": 16, "batch_size": 4, "steps_per_epoch": 2}
        },
        "trainer": {**TINY_CLI_TRAINER, "max_steps": 2, "precision": "32-true"},
        "samples": {"every_n_epochs": 1, "num_samples": 2},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    args = ["fit", "--config", str(config), "--config", str(tmp_path / "tiny.yaml")]
    assert run_cli([*args, *_fsdp_args(monkeypatch, tmp_path), *OVERRIDE]) == 0  # gradient_clip_val: 1.0
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "samples").glob("*.txt"))
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["net.transformer.h.0.attn.c_attn.weight"].shape == (48, 16)  # whole, not a shard
    assert not torch.distributed.is_initialized()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_lightnings_own_fsdp_strategy_fits_the_gpt_recipe_on_a_gpu(monkeypatch, tmp_path):  # pragma: no cover
    (tmp_path / "tinyshakespeare.txt").write_text(SHAKESPEARE_ALPHABET * 600)
    config = str(ROOT / "experiments" / "ar" / "shakespeare_char.yaml")
    args = [
        "fit",
        "--config",
        config,
        "--data.root",
        str(tmp_path),
        "--trainer.max_steps",
        "2",
        "--data.init_args.steps_per_epoch",
        "2",
        "--trainer.devices",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
        "--trainer.strategy",
        "lightning.pytorch.strategies.FSDPStrategy",
        *OVERRIDE,
    ]
    assert run_cli(args) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
