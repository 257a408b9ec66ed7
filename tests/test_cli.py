"""The `lit-genai` command line, run in-process on the real demo config with tiny overrides."""

import glob
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY_CLI_TRAINER

from lit_genai.cli import LitGenAICLI, experiment_name, main

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "experiments" / "diffusion" / "mnist.yaml")
EXPERIMENTS = sorted(glob.glob(str(ROOT / "experiments" / "**" / "*.yaml"), recursive=True))

# Shrinks the demo to seconds: a tiny UNet, tiny batches, a few steps, CSV logs.
TINY = {
    "model": {
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
            "sampling_steps": 3,
            "warmup_steps": 10,
        }
    },
    "data": {"init_args": {"batch_size": 8, "predict_samples": 6}},
    "trainer": TINY_CLI_TRAINER,
    "samples": {"num_samples": 4},
}


@pytest.fixture()
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    config = {**TINY, "trainer": {**TINY["trainer"], "default_root_dir": str(tmp_path / "run")}}
    path.write_text(yaml.safe_dump(config))
    return ["--config", DEMO, "--config", str(path)]


def _run(args):
    """Run the CLI in-process; return the exit code (0 when it returned normally)."""
    try:
        main(args)
    except SystemExit as exit:
        return exit.code
    return 0


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[Path(p).stem for p in EXPERIMENTS])
def test_every_experiment_instantiates(path, tmp_path):
    cli = LitGenAICLI(args=["--config", path, "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert cli.model.sample_shape == cli.datamodule.sample_shape  # linked, not typed twice
    assert cli.model.num_classes in (0, cli.datamodule.num_classes)
    assert cli.trainer.checkpoint_callback.dirpath == str(tmp_path / "checkpoints")


def test_experiment_name_comes_from_the_config_path():
    assert experiment_name(["experiments/diffusion/mnist.yaml"]) == "diffusion-mnist"
    assert experiment_name([]) == "default"


def test_print_config_shows_the_resolved_experiment(capsys):
    assert _run(["fit", "--config", DEMO, "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "lit_genai.diffusion.Diffusion"
    assert printed["ema"]["decay"] == yaml.safe_load(Path(DEMO).read_text())["ema"]["decay"]


def test_fit_twice_then_resume_continues_steps_and_lr_schedule(tiny, tmp_path):
    run = tmp_path / "run"
    assert _run(["fit", *tiny]) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config.yaml").is_file()
    assert list((run / "samples").glob("*.png")), "the sample grid was not written"
    assert _run(["fit", *tiny]) == 0  # a second run in the same folder does not fail on config.yaml

    assert _run(["fit", *tiny, "--ckpt_path", "last", "--trainer.max_steps", "7"]) == 0
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 7
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == 7  # the warm-up went on, not restarted
    base_lr = yaml.safe_load(Path(DEMO).read_text())["model"]["init_args"]["optimizer"]["init_args"]["lr"]
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(base_lr * 8 / 10)
    assert checkpoint["callbacks"]["EMA"]["num_updates"] == 7


def test_resume_without_a_checkpoint_is_one_clear_error(tiny, capsys):
    assert _run(["fit", *tiny, "--ckpt_path", "last"]) == 1
    assert "no last.ckpt in" in capsys.readouterr().err


def test_predict_writes_pngs_and_a_grid(tiny, tmp_path):
    assert _run(["fit", *tiny]) == 0
    code = _run(
        ["predict", *tiny, "--ckpt_path", "last", "--model.sampler", "ddim", "--model.guidance_scale", "2"]
    )
    assert code == 0
    out = tmp_path / "run" / "predictions"
    assert sorted(p.name for p in out.glob("sample_*.png")) == [f"sample_{i:05d}.png" for i in range(6)]
    assert (out / "grid.png").is_file()


def test_wandb_offline_run_holds_the_logged_images(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert _run(["fit", *tiny, "--trainer.logger", "lightning.pytorch.loggers.WandbLogger"]) == 0
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("files/media/images/samples_*.png")), "no sample image in the W&B run folder"


def test_bad_yaml_key_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    num_timestep: 10\n")
    assert _run(["fit", "--config", DEMO, "--config", str(bad)]) != 0
    err = capsys.readouterr().err
    assert "num_timestep" in err


def test_missing_offline_data_is_one_clear_error(tiny, tmp_path, capsys):
    args = [*tiny, "--data", "lit_genai.data.CIFAR10", "--data.root", str(tmp_path / "nothing")]
    args += ["--model.net.init_args.in_channels", "3"]
    assert _run(["fit", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lit-genai: error: CIFAR-10 not found under")
    assert "download" in err[-1]


def test_shape_mismatch_is_one_clear_error(tiny, capsys):
    assert _run(["fit", *tiny, "--model.net.init_args.in_channels", "3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "lit-genai: error: model.net.in_channels=3 but the data's sample_shape=[1, 28, 28] has 1 channel(s): "
        "set model.net.init_args.in_channels: 1"
    )


def test_tensorboard_logger_gets_the_sample_grid(tiny, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert _run(["fit", *tiny, "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger"]) == 0
    (events,) = (tmp_path / "run").glob("tensorboard/version_0/events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
    accumulator.Reload()
    assert "samples" in accumulator.Tags()["images"]


def test_user_callbacks_join_the_defaults(tmp_path):
    extra = tmp_path / "early.yaml"
    extra.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.EarlyStopping\n"
        "      init_args: {monitor: val/loss, patience: 3}\n"
    )
    cli = LitGenAICLI(
        args=["--config", DEMO, "--config", str(extra), "--trainer.default_root_dir", str(tmp_path)],
        run=False,
    )
    names = {type(c).__name__ for c in cli.trainer.callbacks}
    assert {
        "EarlyStopping",
        "EMA",
        "SampleLogger",
        "SampleWriter",
        "ModelCheckpoint",
        "LearningRateLogger",
    } <= names


def test_python_dash_m_and_the_console_script_exist():
    import subprocess
    import sys
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "lit-genai"]
    assert script.value == "lit_genai.cli:main"
    out = subprocess.run(
        [sys.executable, "-m", "lit_genai", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "fit" in out.stdout and "predict" in out.stdout


def test_fit_without_a_logger(tiny):
    assert _run(["fit", *tiny, "--trainer.logger", "false"]) == 0
