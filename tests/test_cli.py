"""The `lit-genai` command line, run in-process on the real demo config with tiny overrides."""

import glob
import importlib
import json
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from helpers import TINY_CLI_TRAINER, quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

from lit_genai.cli import LINKED_FROM_DATA, LitGenAICLI, _plain, experiment_name, main
from lit_genai.nn.autoencoder import Decoder, Encoder
from lit_genai.vae.autoencoder import KLAutoencoder

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
            "sampling": {"steps": 3},
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
    """Run the CLI in-process as ``lit-genai <args>``; return the exit code (0 when it returned normally).

    ``sys.argv`` is pytest's otherwise, and LightningCLI warns on stderr when it and ``args`` both exist.
    """
    try:
        with mock.patch.object(sys, "argv", ["lit-genai"]):
            main(args)
    except SystemExit as exit:
        return exit.code
    return 0


# The 65 symbols of Tiny Shakespeare: a stand-in corpus with its alphabet lets the Shakespeare
# experiments instantiate (their vocabulary is read from the text) without the real file.
SHAKESPEARE_ALPHABET = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def stand_in_tokenizer(tmp_path_factory) -> Path:
    """A VQ-VAE checkpoint of experiments/vae/vqvae_mnist.yaml's token shape (256 codes, 7 x 7 ids
    per digit) with tiny networks, fitted 2 steps: token experiments instantiate without the real one."""
    return _stand_in_tokenizer(tmp_path_factory.mktemp("tokenizer"), "vqvae_mnist.yaml")


@pytest.fixture(scope="module")
def stand_in_shapes_tokenizer(tmp_path_factory) -> Path:
    """The same for experiments/vae/vqvae_shapes.yaml (3 x 32 x 32 pictures, 8 x 8 ids)."""
    return _stand_in_tokenizer(tmp_path_factory.mktemp("shapes_tokenizer"), "vqvae_shapes.yaml")


def _stand_in_tokenizer(folder: Path, experiment: str) -> Path:
    net = {"base_channels": 8, "num_res_blocks": 1, "latent_channels": 4, "num_groups": 4}
    tiny = {
        "model": {
            "init_args": {
                "encoder": {"init_args": net},
                "decoder": {"init_args": net},
                "quantizer": {"init_args": {"code_dim": 4}},
            }
        },
        "trainer": {**TINY_CLI_TRAINER, "max_steps": 2, "default_root_dir": str(folder)},
    }
    (folder / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    config = str(ROOT / "experiments" / "vae" / experiment)
    assert _run(["fit", "--config", config, "--config", str(folder / "tiny.yaml")]) == 0
    return folder / "checkpoints" / "last.ckpt"


def _stand_in_autoencoder(folder: Path, config: dict) -> Path:
    """A KL autoencoder checkpoint for a latent diffusion experiment: the image shape of its data,
    the latent channels its net takes, f = 4 (the latent experiments' first stages), tiny networks
    fitted 1 step on noise, so the experiment instantiates without the first stage's run."""
    data = config["data"]
    module, _, name = data["class_path"].rpartition(".")
    C, H, W = getattr(importlib.import_module(module), name)(**data.get("init_args", {})).sample_shape
    c = config["model"]["init_args"]["net"]["init_args"]["in_channels"]
    net = dict(image_size=H, base_channels=8, channel_mult=[1, 1], num_res_blocks=1, latent_channels=c)
    model = KLAutoencoder(
        Encoder(C, double_latent=True, num_groups=4, **net),
        Decoder(C, num_groups=4, **net),
        sample_shape=(C, H, W),
    )
    images = DataLoader(TensorDataset(torch.rand(4, C, H, W) * 2 - 1, torch.zeros(4, dtype=torch.long)))
    trainer = quiet_trainer(folder, max_steps=1)
    trainer.fit(model, train_dataloaders=images)
    trainer.save_checkpoint(folder / "autoencoder.ckpt")
    return folder / "autoencoder.ckpt"


def _stand_in_gpt2(folder: Path) -> tuple[Path, Path]:
    """A Hugging Face GPT-2 folder of a tiny random GPT-2 (config.json, pytorch_model.bin) with a
    tiny BPE tokenizer (vocab.json, merges.txt), and a JSONL file of four Alpaca records."""
    from test_gpt2_tokenizer import write_tokenizer

    from lit_genai.export.huggingface import gpt2_config, gpt2_state_dict
    from lit_genai.nn.transformer import GPT

    gpt2 = write_tokenizer(folder / "gpt2")
    vocab_size = len(json.loads((gpt2 / "vocab.json").read_text(encoding="utf-8")))
    net = GPT(
        vocab_size=vocab_size,
        block_size=512,
        n_layer=1,
        n_head=2,
        n_embd=16,
        bias=True,
        activation="gelu_tanh",
    )
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", **gpt2_config(net)}))
    torch.save(gpt2_state_dict(net), gpt2 / "pytorch_model.bin")
    records = folder / "alpaca.jsonl"
    lines = [
        {"instruction": f"Count to {i}.", "input": "", "output": " ".join(map(str, range(i)))}
        for i in (2, 3, 4, 5)
    ]
    records.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return gpt2, records


def _stand_in_text_base(folder: Path) -> Path:
    """A checkpoint holding what a fine-tuning's data reads from its base (``vocabulary_from``): the
    text demo's character vocabulary, the characters of the help topics."""
    from lit_genai.data.text_sources import pydoc_topics
    from lit_genai.data.tokenizers import vocabulary_of

    path = folder / "text_demo.ckpt"
    torch.save({"hyper_parameters": {"vocabulary": vocabulary_of(list(pydoc_topics().values()))}}, path)
    return path


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[Path(p).stem for p in EXPERIMENTS])
def test_every_experiment_instantiates(path, tmp_path, request):
    args = ["--config", path, "--trainer.default_root_dir", str(tmp_path)]
    text = "\n".join(line for line in Path(path).read_text().splitlines() if not line.startswith("#"))
    if "name: tiny_shakespeare" in text:
        (tmp_path / "tinyshakespeare.txt").write_text(SHAKESPEARE_ALPHABET * 600)
        args += ["--data.root", str(tmp_path)]
    if "lit_genai.data.audio.AudioFolder" in text:  # stand-in recordings: two 1.5 s noise bursts
        import soundfile

        (tmp_path / "speech").mkdir()
        for i in range(2):
            wave = torch.randn(24000, generator=torch.Generator().manual_seed(i)).numpy() * 0.3
            soundfile.write(tmp_path / "speech" / f"clip{i}.wav", wave, 16000)
        args += ["--data.init_args.root", str(tmp_path / "speech")]
    if "lit_genai.data.tokens.ImageTokens" in text:  # the tokenizer is another experiment's output
        shapes = "lit_genai.data.CaptionedShapes" in text
        tokenizer = request.getfixturevalue("stand_in_shapes_tokenizer" if shapes else "stand_in_tokenizer")
        args += ["--data.init_args.tokenizer", str(tokenizer)]
    if "PretrainedGPT2" in text:  # a local GPT-2 folder (weights and tokenizer) and Alpaca records
        folder, records = _stand_in_gpt2(tmp_path)
        args += ["--model.init_args.net.init_args.folder", str(folder)]
        args += ["--data.init_args.tokenizer_folder", str(folder), "--data.init_args.path", str(records)]
    if "vocabulary_from:" in text:  # the base model's vocabulary: the text demo's checkpoint
        args += ["--data.init_args.vocabulary_from", str(_stand_in_text_base(tmp_path))]
    config = yaml.safe_load(text)
    if (config.get("model") or {}).get("init_args", {}).get("autoencoder"):  # another experiment's output
        args += ["--model.init_args.autoencoder", str(_stand_in_autoencoder(tmp_path, config))]
    cli = LitGenAICLI(args=args, run=False)
    for name in LINKED_FROM_DATA:  # linked, not typed twice
        if hasattr(cli.datamodule, name) and hasattr(cli.model, name) and name != "num_classes":
            assert _plain(getattr(cli.model, name)) == _plain(getattr(cli.datamodule, name)), name
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
        [
            "predict",
            *tiny,
            "--ckpt_path",
            "last",
            "--model.sampling.sampler",
            "ddim",
            "--model.sampling.guidance_scale",
            "2",
        ]
    )
    assert code == 0
    out = tmp_path / "run" / "predictions"
    assert sorted(p.name for p in out.glob("sample_*.png")) == [f"sample_{i:05d}.png" for i in range(6)]
    assert (out / "grid.png").is_file()


def test_wandb_offline_run_holds_the_logged_images(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    import wandb

    try:
        assert _run(["fit", *tiny, "--trainer.logger", "lightning.pytorch.loggers.WandbLogger"]) == 0
    finally:
        wandb.finish()  # close the run, or the next WandbLogger in this process would reuse it
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


# ---------------------------------------------------------------------- links from the data

TOKEN = ["--model", "toys.TokenToyModel", "--data", "toys.TokenToyData"]


@pytest.fixture()
def token(tmp_path):
    """CLI arguments of a tiny token-model run (tests/toys.py) in ``tmp_path / "run"``."""
    path = tmp_path / "token.yaml"
    path.write_text(
        yaml.safe_dump({"trainer": {**TINY_CLI_TRAINER, "default_root_dir": str(tmp_path / "run")}})
    )
    return [*TOKEN, "--config", str(path)]


def test_a_token_model_gets_vocab_block_and_classes_from_the_data(token, tmp_path):
    # The toy model's defaults (4, 4, 0) differ from the data's (11, 5, 3); with block_size unlinked
    # its loss refuses the data's 5-token sequences, with vocab_size unlinked the targets are out of range.
    assert _run(["fit", *token]) == 0
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4
    hparams = checkpoint["hyper_parameters"]
    assert (hparams["vocab_size"], hparams["block_size"], hparams["num_classes"]) == (11, 5, 3)
    assert "sample_shape" not in hparams


def test_an_image_model_still_gets_sample_shape_and_num_classes(tmp_path):
    cli = LitGenAICLI(args=["--config", DEMO, "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert cli.model.hparams["sample_shape"] == (1, 28, 28) == cli.datamodule.sample_shape
    assert cli.model.hparams["num_classes"] == 10 == cli.datamodule.num_classes
    assert not hasattr(cli.datamodule, "vocab_size")


def test_a_model_value_that_the_data_overrides_is_one_clear_error(token, capsys):
    assert _run(["fit", *token, "--model.num_classes", "7"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "lit-genai: error: model.init_args.num_classes=7 but the data (TokenToyData) has num_classes=3: "
        "remove model.init_args.num_classes, the command line links it from the data"
    )


# ---------------------------------------------------------------------- --ckpt_path checks


@pytest.fixture()
def token_run(token, tmp_path):
    """A finished tiny token run: (its CLI arguments, its last.ckpt)."""
    assert _run(["fit", *token]) == 0
    return token, tmp_path / "run" / "checkpoints" / "last.ckpt"


def _truncated(good, path):
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])


def _unsafe(good, path):  # a checkpoint holding an object weights_only loading refuses
    import argparse

    checkpoint = torch.load(good, weights_only=True)
    checkpoint["extra"] = argparse.Namespace(note="pickled object")
    torch.save(checkpoint, path)


BAD_CHECKPOINTS = {
    "missing": (lambda good, path: None, "no such file"),
    "truncated": (_truncated, "truncated or corrupt checkpoint"),
    "text": (lambda good, path: path.write_text("not a checkpoint\n"), "not a checkpoint"),
    "state_dict": (
        lambda good, path: torch.save({"w": torch.zeros(2)}, path),
        "not a Lightning checkpoint (no 'state_dict' key; it holds keys w)",
    ),
    "unsafe": (_unsafe, "only if you trust the file, pass --weights_only false"),
}


@pytest.mark.parametrize("kind", list(BAD_CHECKPOINTS))
def test_a_bad_checkpoint_is_one_clear_error_and_the_good_one_is_kept(kind, token_run, tmp_path, capsys):
    token, good = token_run
    make, problem = BAD_CHECKPOINTS[kind]
    bad = tmp_path / f"{kind}.ckpt"
    make(good, bad)
    before = good.read_bytes()
    capsys.readouterr()
    assert _run(["fit", *token, "--ckpt_path", str(bad), "--trainer.max_steps", "6"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lit-genai: error: --ckpt_path {bad}: ")
    assert problem in err[0]
    assert good.read_bytes() == before  # nothing wrote over the run's checkpoint


def test_a_good_checkpoint_resumes_and_a_trusted_unsafe_one_loads(token_run, tmp_path):
    token, good = token_run
    assert _run(["fit", *token, "--ckpt_path", str(good), "--trainer.max_steps", "6"]) == 0
    assert torch.load(good, weights_only=True)["global_step"] == 6
    unsafe = tmp_path / "unsafe.ckpt"
    _unsafe(good, unsafe)
    assert _run(["validate", *token, "--ckpt_path", str(unsafe), "--weights_only", "false"]) == 0


# ---------------------------------------------------------------------- parser errors


@pytest.mark.parametrize(
    "args, facts",
    [
        (["--config", "no_such_config.yaml"], ["no_such_config.yaml", "does not exist"]),
        (["--config", DEMO, "--trainer.max_epochs", "abc"], ["trainer.max_epochs", "abc"]),
        (
            ["--config", DEMO, "--model.net", "lit_genai.nn.Unet"],
            ["import path 'lit_genai.nn.Unet' not found"],
        ),
    ],
    ids=["missing-config", "wrong-type", "unknown-class-path"],
)
def test_a_parser_error_is_short_and_says_what_is_wrong(args, facts, capsys):
    assert _run(["fit", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 3, err
    assert err[0].startswith("lit-genai: error: ")
    for fact in facts:
        assert fact in err[0]
    assert err[-1] == "Run 'lit-genai fit --help' for the options."


# ---------------------------------------------------------------------- what a fit prints

# Notices that every `lit-genai fit` printed once, none of which a user could act on (lit_genai/cli.py).
UNACTIONABLE_NOTICES = (
    "The anonymous setting has no effect",  # W&B, from the anonymous=None Lightning passes
    "git root",  # W&B's "git root <run folder> does not exist"
    "litlogger",  # Lightning's advert
    "LeafSpec",  # a torch deprecation inside Lightning's _pytree
)


def test_a_fit_prints_no_notice_the_user_cannot_act_on(tmp_path):
    # A real process with the default logger (W&B, offline) and Python's own warning display: in-process
    # runs see pytest's warning capture and an import-time logging handler instead.
    import os
    import subprocess

    tiny = {
        "model": {"init_args": {"net": {"init_args": {"width": 4, "feature_dim": 16}}}},
        "data": {"init_args": {"batch_size": 32}},
        "trainer": {
            **{k: v for k, v in TINY_CLI_TRAINER.items() if k != "logger"},
            "max_steps": 2,
            "default_root_dir": str(tmp_path / "run"),
        },
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    # No WANDB_* of this process: WANDB_SILENT (conftest.py) hides W&B's messages, and an in-process
    # W&B run of an earlier test leaves its service's address, which a child would print through.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    config = str(ROOT / "experiments" / "eval" / "mnist_classifier.yaml")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lit_genai",
            "fit",
            "--config",
            config,
            "--config",
            str(tmp_path / "tiny.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "wandb sync" in output  # W&B and Lightning still talk: the check below is not vacuous
    assert "`Trainer.fit` stopped" in output
    assert not [notice for notice in UNACTIONABLE_NOTICES if notice in output], output
