"""``--ckpt_path`` never changes the config (lit_genai/cli_checkpoint.py): the reported failures
through the command line, then the pure functions.

Each bad case runs the CLI in-process and checks that stderr is one line and nothing was written:
neither the config's run folder nor the checkpoint's changes.
"""

import re
import shutil
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from helpers import TINY_CLI_TRAINER
from test_cli import DEMO, TINY, TOKEN, _run
from test_gan_module import DCGAN_MNIST
from test_gan_module import TINY as TINY_GAN
from toys import TokenToyModel

from lit_genai.cli import LitGenAICLI
from lit_genai.cli_checkpoint import (
    TRAINING_KEYS,
    ConfigOptimizerValues,
    Difference,
    best_checkpoint,
    check_against_model,
    hparam_differences,
    same_class,
    training_keys,
    training_notice,
)
from lit_genai.errors import ConfigError, LitGenAIError


def _config(folder: Path, overrides: dict, root: Path) -> Path:
    path = folder / f"{root.name}.yaml"
    path.write_text(
        yaml.safe_dump({**overrides, "trainer": {**overrides["trainer"], "default_root_dir": str(root)}})
    )
    return path


def _diffusion_args(folder: Path, root: Path) -> list[str]:
    """The tiny demo of tests/test_cli.py (``tiny``), its run folder ``root``."""
    return ["--config", DEMO, "--config", str(_config(folder, TINY, root))]


def _token_args(folder: Path, root: Path) -> list[str]:
    """The tiny token run of tests/test_cli.py (``token``), its run folder ``root``."""
    return [*TOKEN, "--config", str(_config(folder, {"trainer": TINY_CLI_TRAINER}, root))]


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time: a fingerprint of what was written."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("lit-genai: error: --ckpt_path ")
    return err[0]


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory):
    """A finished tiny demo run (8 base channels): (its folder, its last.ckpt); read-only."""
    folder = tmp_path_factory.mktemp("diffusion")
    assert _run(["fit", *_diffusion_args(folder, folder / "run")]) == 0
    return folder / "run", folder / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def gan_checkpoint(tmp_path_factory):
    """A tiny DCGAN run's last.ckpt, saved by ``lit-genai fit`` (``_class_path`` lit_genai.gan.GAN);
    read-only."""
    folder = tmp_path_factory.mktemp("gan")
    config = _config(folder, TINY_GAN, folder / "run")
    assert _run(["fit", "--config", DCGAN_MNIST, "--config", str(config), "--trainer.max_steps", "2"]) == 0
    return folder / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def token_checkpoints(tmp_path_factory):
    """The checkpoints folder of a finished tiny token run (last + best); read-only."""
    folder = tmp_path_factory.mktemp("token")
    assert _run(["fit", *_token_args(folder, folder / "run")]) == 0
    return folder / "run" / "checkpoints"


# ---------------------------------------------------------------------- the reported failures


@pytest.mark.parametrize("ckpt", ["file", "last"])
def test_a_training_value_on_the_command_line_is_used_and_said_once(ckpt, tmp_path, capsys):
    # reported: --model.init_args.lr 1e12 with an explicit checkpoint path was ignored
    args = _token_args(tmp_path, tmp_path / "run")
    assert _run(["fit", *args]) == 0
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    path = str(last) if ckpt == "file" else "last"
    assert (
        _run(["fit", *args, "--ckpt_path", path, "--model.init_args.lr", "0.5", "--trainer.max_steps", "6"])
        == 0
    )
    notices = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-genai:")]
    assert notices == ["lit-genai: using the config's model.init_args.lr=0.5 (the checkpoint had 0.1)"]
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 6
    assert checkpoint["hyper_parameters"]["lr"] == 0.5
    # the resumed optimiser state trained with the config's lr, not the restored 0.1
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == 0.5


def test_a_resumed_warm_up_keeps_its_place_with_the_configs_lr(diffusion_run, tmp_path, capsys):
    run, _ = diffusion_run
    shutil.copytree(run, tmp_path / "run")
    args = _diffusion_args(tmp_path, tmp_path / "run")
    lr = ["--model.init_args.optimizer.init_args.lr", "1e-3"]
    assert _run(["fit", *args, "--ckpt_path", "last", *lr, "--trainer.max_steps", "7"]) == 0
    assert "optimizer.init_args.lr=0.001 (the checkpoint had 0.002)" in capsys.readouterr().err
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["lr_schedulers"][0]["base_lrs"] == [1e-3]
    # TINY's warm-up of 10 steps, 7 done: the config's lr x 8/10, as an uninterrupted run would have
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 8 / 10)


@pytest.mark.parametrize("ckpt", ["file", "last"])
def test_a_wider_network_than_the_checkpoints_is_one_line_and_writes_nothing(
    ckpt, diffusion_run, tmp_path, capsys
):
    # reported: a 16-channel config became the checkpoint's 8 channels
    run, last = diffusion_run
    if ckpt == "last":
        shutil.copytree(run, tmp_path / "run")
        root, path = tmp_path / "run", "last"
    else:
        root, path = tmp_path / "other", str(last)
    args = _diffusion_args(tmp_path, root)
    before, theirs = _files(tmp_path), _files(run)
    wide = ["--model.init_args.net.init_args.base_channels", "16"]
    assert _run(["predict", *args, "--ckpt_path", path, *wide]) == 1
    line = _one_error_line(capsys)
    assert "model.init_args.net.init_args.base_channels is 16 in the config but 8 in the checkpoint" in line
    assert _files(tmp_path) == before
    assert _files(run) == theirs


@pytest.mark.parametrize(
    "subcommand",
    [
        "predict",
        "robustness",
        *(pytest.param(s, marks=pytest.mark.slow) for s in ("fit", "validate", "test")),
    ],
)
def test_a_checkpoint_of_another_model_class_is_one_line_before_anything_is_written(
    subcommand, gan_checkpoint, tmp_path, capsys
):
    # reported: a GAN checkpoint turned the diffusion run into a GAN, and predict wrote GAN samples
    # into the GAN's run folder
    theirs = _files(gan_checkpoint.parent.parent)
    args = _diffusion_args(tmp_path, tmp_path / "run")
    assert _run([subcommand, *args, "--ckpt_path", str(gan_checkpoint)]) == 1
    assert _one_error_line(capsys) == (
        f"lit-genai: error: --ckpt_path {gan_checkpoint}: the checkpoint is a lit_genai.gan.GAN, the config "
        "is a lit_genai.diffusion.Diffusion: pass a checkpoint of this config's model, or the config the "
        "checkpoint was trained with"
    )
    assert not (tmp_path / "run").exists()
    assert _files(gan_checkpoint.parent.parent) == theirs


def test_last_of_another_model_class_is_one_line_not_a_traceback(gan_checkpoint, tmp_path, capsys):
    # reported: with --ckpt_path last a checkpoint of another class was a 40-153-line traceback
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(gan_checkpoint, tmp_path / "run" / "checkpoints" / "last.ckpt")
    before = _files(tmp_path / "run")
    assert _run(["test", *_diffusion_args(tmp_path, tmp_path / "run"), "--ckpt_path", "last"]) == 1
    assert "the checkpoint is a lit_genai.gan.GAN, the config is a lit_genai.diffusion.Diffusion" in (
        _one_error_line(capsys)
    )
    assert _files(tmp_path / "run") == before


def test_weights_of_another_shape_are_one_line_naming_the_parameter(diffusion_run, tmp_path, capsys):
    # a checkpoint without hyperparameters (saved from Python, say): its state dict is compared
    _, last = diffusion_run
    bare = tmp_path / "bare.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    del checkpoint["hyper_parameters"]
    torch.save(checkpoint, bare)
    wide = ["--model.init_args.net.init_args.base_channels", "16"]
    assert (
        _run(["predict", *_diffusion_args(tmp_path, tmp_path / "run"), "--ckpt_path", str(bare), *wide]) == 1
    )
    line = _one_error_line(capsys)
    found = re.search(
        r": (net\.[\w.]+) is \((\d+), .*\) in the config's lit_genai\.diffusion\.module\.Diffusion "
        r"but \((\d+), .*\) in the checkpoint: set the network's init_args",
        line,
    )
    assert found and int(found[2]) == 2 * int(found[3]), line  # twice the checkpoint's width
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_of_other_data_is_one_line(token_checkpoints, tmp_path, capsys):
    args = [*_token_args(tmp_path, tmp_path / "run"), "--checkpoint.dirpath", str(token_checkpoints)]
    theirs = _files(token_checkpoints)
    assert _run(["validate", *args, "--ckpt_path", "last", "--data.init_args.vocab_size", "13"]) == 1
    assert "model.init_args.vocab_size is 13 here (from the data) but 11 in the checkpoint: use the data" in (
        _one_error_line(capsys)
    )
    assert not (tmp_path / "run").exists() and _files(token_checkpoints) == theirs


def test_fit_cannot_continue_another_optimisers_state(diffusion_run, tmp_path, capsys):
    _, last = diffusion_run
    sgd = ["--model.init_args.optimizer", "torch.optim.SGD", "--model.init_args.optimizer.lr", "0.1"]
    args = _diffusion_args(tmp_path, tmp_path / "run")
    assert _run(["fit", *args, "--ckpt_path", str(last), *sgd]) == 1
    assert (
        "model.init_args.optimizer.class_path must stay torch.optim.Adam (the config has torch.optim.SGD)"
        in _one_error_line(capsys)
    )
    assert not (tmp_path / "run").exists()


def test_predict_writes_into_the_configs_run_folder_only(diffusion_run, tmp_path):
    run, last = diffusion_run
    theirs = _files(run)
    assert _run(["predict", *_diffusion_args(tmp_path, tmp_path / "other"), "--ckpt_path", str(last)]) == 0
    assert len(list((tmp_path / "other" / "predictions").glob("sample_*.png"))) == 6
    assert _files(run) == theirs


def test_best_is_the_checkpoint_model_checkpoint_recorded(token_checkpoints, tmp_path):
    args = [*_token_args(tmp_path, tmp_path / "run"), "--checkpoint.dirpath", str(token_checkpoints)]
    (best,) = token_checkpoints.glob("best-*.ckpt")
    with mock.patch.object(sys, "argv", ["lit-genai"]):  # pytest's, else (LightningCLI warns when both exist)
        cli = LitGenAICLI(args=["validate", *args, "--ckpt_path", "best"])
    assert cli.trainer.ckpt_path == str(best)


# ---------------------------------------------------------------------- the pure functions


def _hparams(**init_args):
    net = {"class_path": "lit_genai.nn.UNet", "init_args": {"base_channels": 8, "channel_mult": [1, 2]}}
    return {
        "_class_path": "lit_genai.diffusion.Diffusion",
        "net": net,
        "sample_shape": (1, 28, 28),
        **init_args,
    }


def test_differences_are_leaves_with_full_keys_in_the_configs_order():
    config = _hparams(
        num_timesteps=50, optimizer={"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3}}
    )
    checkpoint = _hparams(
        num_timesteps=1000, optimizer={"class_path": "torch.optim.Adam", "init_args": {"lr": 2e-4}}
    )
    checkpoint["net"]["init_args"]["base_channels"] = 16
    checkpoint["sample_shape"] = [1, 28, 28]  # a YAML list equals the data's tuple
    checkpoint["only_in_the_checkpoint"] = 3
    assert hparam_differences(config, checkpoint) == [
        Difference("net", "model.init_args.net.init_args.base_channels", 8, 16),
        Difference("num_timesteps", "model.init_args.num_timesteps", 50, 1000),
        Difference("optimizer", "model.init_args.optimizer.init_args.lr", 1e-3, 2e-4),
    ]


def test_another_class_path_is_one_difference_and_aliases_are_one_class():
    config, checkpoint = _hparams(), _hparams()
    checkpoint["net"] = {"class_path": "lit_genai.nn.DiT", "init_args": {"depth": 2}}
    assert hparam_differences(config, checkpoint) == [
        Difference("net", "model.init_args.net.class_path", "lit_genai.nn.UNet", "lit_genai.nn.DiT")
    ]
    assert same_class("lit_genai.nn.UNet", "lit_genai.nn.unet.UNet")
    assert not same_class("lit_genai.nn.UNet", "lit_genai.nn.DiT")
    assert not same_class("not_imported.Module", "lit_genai.nn.UNet")  # never imported to find out


def test_training_keys_are_the_shared_ones_plus_the_modules_own():
    class WithOwn(TokenToyModel):
        training_hparams = ("block_size",)

    assert {"optimizer", "lr", "warmup_steps", "p_uncond", "lr_scheduler"} <= set(TRAINING_KEYS)
    assert "block_size" not in training_keys(TokenToyModel) and "block_size" in training_keys(WithOwn)


def _toy_checkpoint(model, **hparams):
    return {"state_dict": model.state_dict(), "hyper_parameters": {**dict(model.hparams), **hparams}}


def test_check_against_model_sorts_class_architecture_weights_and_training():
    model = TokenToyModel(vocab_size=5, lr=0.1)
    assert check_against_model(_toy_checkpoint(model), model, "X") == []
    (applied,) = check_against_model(_toy_checkpoint(model, lr=0.3), model, "X")
    assert applied == Difference("lr", "model.init_args.lr", 0.1, 0.3)
    with pytest.raises(
        ConfigError, match=r"^X: model.init_args.block_size is 4 in the config but 8 in the checkpoint"
    ):
        check_against_model(_toy_checkpoint(model, block_size=8), model, "X")
    model.hparams["_class_path"] = "toys.TokenToyModel"  # as the command line saves it
    with pytest.raises(
        ConfigError, match=r"^X: the checkpoint is a toys.Other, the config is a toys.TokenToyModel"
    ):
        check_against_model(_toy_checkpoint(model, _class_path="toys.Other"), model, "X")
    narrow = {"state_dict": TokenToyModel(vocab_size=3).state_dict(), "hyper_parameters": {}}
    with pytest.raises(ConfigError, match=r"^X: bigram.weight is \(5, 5\) in the config's .* but \(3, 3\)"):
        check_against_model(narrow, model, "X")
    with pytest.raises(ConfigError, match=r"^X: its weights are not those of .*: it has extra.weight"):
        check_against_model(
            {"state_dict": {**model.state_dict(), "extra.weight": torch.zeros(1)}}, model, "X"
        )


def test_a_linked_value_the_module_does_not_take_is_not_compared():
    # the CLI saves every data link, e.g. an audio clip's sample_shape for a NextToken that takes none
    model = TokenToyModel()
    model.hparams["sample_shape"] = [1, 16000]
    assert (
        check_against_model(
            _toy_checkpoint(model, sample_shape=[1, 8000]), model, "X", linked=["sample_shape"]
        )
        == []
    )


def test_fit_refuses_a_changed_optimiser_class_or_lr_scheduler_but_other_runs_take_them():
    class Injected(TokenToyModel):  # optimiser and scheduler injected as the paradigms' are
        def __init__(self, optimizer=None, lr_scheduler=None) -> None:
            super().__init__()

    model = Injected()
    adam = {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.1}}
    model.hparams.update(
        optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}, lr_scheduler=None
    )
    for other in ({"optimizer": adam}, {"lr_scheduler": {"class_path": "torch.optim.lr_scheduler.StepLR"}}):
        checkpoint = _toy_checkpoint(model, **other)
        assert len(check_against_model(checkpoint, model, "X")) == 1  # predict, test: the config's
        with pytest.raises(
            ConfigError, match="fit continues the checkpoint's optimiser and LR-scheduler states"
        ):
            check_against_model(checkpoint, model, "X", fit=True)


def test_the_notice_is_one_line_of_short_values():
    differences = [
        Difference("lr", "model.init_args.lr", 1e-3, 2e-4),
        Difference("optimizer", "model.init_args.optimizer.init_args.betas", [0.9, 0.99], (0.9, 0.999)),
    ]
    assert training_notice(differences) == (
        "lit-genai: using the config's model.init_args.lr=0.001 (the checkpoint had 0.0002), "
        "model.init_args.optimizer.init_args.betas=[0.9, 0.99] (the checkpoint had [0.9, 0.999])"
    )
    long = training_notice([Difference("init_from", "model.init_args.init_from", "a\n" * 100, None)])
    assert "\n" not in long and len(long) < 200


def test_the_optimiser_values_are_the_configs_after_a_restore():
    """What ``fit`` does: optimisers built from the config, the checkpoint's states loaded over them."""
    weights = [torch.nn.Parameter(torch.zeros(2))]
    saved = torch.optim.Adam(weights, lr=0.2, betas=(0.5, 0.6))
    saved_schedule = torch.optim.lr_scheduler.LambdaLR(saved, lambda step: (step + 1) / 10)
    for _ in range(3):
        saved.step()
        saved_schedule.step()
    checkpoint = {"optimizer_states": [saved.state_dict()], "lr_schedulers": [saved_schedule.state_dict()]}
    config = torch.optim.Adam(weights, lr=0.1, betas=(0.9, 0.99))
    schedule = torch.optim.lr_scheduler.LambdaLR(config, lambda step: (step + 1) / 10)
    trainer = type(
        "T", (), {"optimizers": [config], "lr_scheduler_configs": [type("C", (), {"scheduler": schedule})]}
    )
    callback = ConfigOptimizerValues(checkpoint, "X")
    callback.on_fit_start(trainer, None)
    config.load_state_dict(checkpoint["optimizer_states"][0])  # Lightning's restore_training_state
    schedule.load_state_dict(checkpoint["lr_schedulers"][0])
    assert config.param_groups[0]["lr"] == pytest.approx(0.2 * 4 / 10)
    callback.on_train_start(trainer, None)
    assert config.param_groups[0]["lr"] == pytest.approx(
        0.1 * 4 / 10
    )  # the config's, 4 steps into the warm-up
    assert config.param_groups[0]["betas"] == (0.9, 0.99) and schedule.base_lrs == [0.1]
    schedule.step()
    assert config.param_groups[0]["lr"] == pytest.approx(0.1 * 5 / 10)


def test_best_reads_the_record_of_last_and_follows_a_moved_folder(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    with pytest.raises(LitGenAIError, match="--ckpt_path best: no last.ckpt in"):
        best_checkpoint(str(folder))
    (folder / "best-epoch=3-step=9.ckpt").write_bytes(b"")
    record = {"best_model_path": "/elsewhere/checkpoints/best-epoch=3-step=9.ckpt"}
    torch.save(
        {"state_dict": {}, "callbacks": {"ModelCheckpoint{'monitor': 'val/loss'}": record}},
        folder / "last.ckpt",
    )
    assert best_checkpoint(str(folder)) == str(folder / "best-epoch=3-step=9.ckpt")
    torch.save({"state_dict": {}, "callbacks": {}}, folder / "last.ckpt")
    with pytest.raises(LitGenAIError, match="records no best checkpoint"):
        best_checkpoint(str(folder))
