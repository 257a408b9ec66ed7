"""Text-to-image through the command line and the Python API: captions from ``CaptionedShapes`` reach
the model, the caption vocabulary travels in the checkpoint (a prompt is tokenized without the data),
``predict --model.sampling.prompt`` says in ``prompts.txt`` which caption made which file, and a
prompt with a word the encoder does not know is one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lit_genai.api import generate, load

TINY = {
    "model": {
        "class_path": "lit_genai.diffusion.Diffusion",
        "init_args": {
            "net": {
                "class_path": "lit_genai.nn.UNet",
                "init_args": {
                    "in_channels": 3,
                    "base_channels": 8,
                    "channel_mult": [1, 2],
                    "num_res_blocks": 1,
                    "attention_levels": [],
                    "num_groups": 4,
                    "text_encoder": {
                        "class_path": "lit_genai.nn.TextEncoder",
                        "init_args": {
                            "vocab_size": 26,
                            "max_length": 16,
                            "n_layer": 1,
                            "n_head": 2,
                            "n_embd": 16,
                        },
                    },
                    "cross_attention_levels": [1],
                    "cross_attention_heads": 2,
                },
            },
            "num_timesteps": 50,
            "beta_schedule": "cosine",
            "test_bpd_timesteps": 0,
            "sampling": {"sampler": "ddim", "steps": 2, "guidance_scale": 1.0},
        },
    },
    "data": {
        "class_path": "lit_genai.data.CaptionedShapes",
        "init_args": {
            "image_size": 16,
            "train_size": 16,
            "val_size": 8,
            "test_size": 8,
            "held_out_size": 8,
            "batch_size": 8,
        },
    },
    "trainer": {"max_steps": 2, "limit_val_batches": 1, "logger": False, "enable_progress_bar": False},
    "samples": {"every_n_epochs": 0},
}
PROMPTS = ["a large green star on a white background", "blue background, red circle, small, top left"]


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lit_genai.cli", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={
            "WANDB_MODE": "disabled",
            "OMP_NUM_THREADS": "1",
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
        },
        timeout=600,
    )


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("t2i")
    (root / "t2i").mkdir()
    (root / "t2i" / "tiny.yaml").write_text(yaml.safe_dump(TINY))  # the run folder: runs/t2i-tiny
    run = _cli(root, "fit", "--config", "t2i/tiny.yaml")
    assert run.returncode == 0, run.stderr[-3000:]
    return root


def test_predict_writes_which_prompt_made_which_file(fitted):
    args = [
        "predict",
        "--config",
        "t2i/tiny.yaml",
        "--ckpt_path",
        "last",
        "--data.init_args.predict_samples",
        "3",
    ]
    run = _cli(fitted, *args, "--model.init_args.sampling.prompt", str(PROMPTS))
    assert run.returncode == 0, run.stderr[-3000:]
    out = fitted / "runs" / "t2i-tiny" / "predictions"
    lines = (out / "prompts.txt").read_text().splitlines()
    assert lines == [f"sample_{i:05d}.png\t{PROMPTS[i % 2]}" for i in range(3)]
    assert all((out / f"sample_{i:05d}.png").is_file() for i in range(3))


def test_an_unknown_word_is_one_line(fitted):
    args = [
        "predict",
        "--config",
        "t2i/tiny.yaml",
        "--ckpt_path",
        "last",
        "--data.init_args.predict_samples",
        "1",
    ]
    run = _cli(fitted, *args, "--model.init_args.sampling.prompt", "a purple star")
    assert run.returncode == 1
    assert (
        run.stderr.count("lit-genai: error:") == 1 and "Restoring states" not in run.stderr
    )  # before loading
    (error,) = [line for line in run.stderr.splitlines() if "lit-genai: error:" in line]
    assert "does not know: purple" in error, run.stderr[-2000:]


def test_the_checkpoint_carries_the_caption_vocabulary(fitted):
    module = load(fitted / "runs" / "t2i-tiny")  # no data module: the words come from the checkpoint
    assert module.conditions == ("text",) and "star" in module.hparams.text_vocabulary
    images = generate(module, 2, seed=3, cond={"text": PROMPTS})
    again = generate(module, 1, seed=4, cond={"text": PROMPTS[1:]})
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.uint8
    assert torch.equal(images[1:], again)  # sample i: generator seed + i, its own caption
    module.sampling = module.sampling.replace(prompt=PROMPTS)
    assert torch.equal(generate(module, 1, seed=3, start=1), again)  # sample 1 takes prompt 1, as predict


def test_a_trained_text_encoder_is_reused_frozen(fitted, tmp_path):
    from lit_genai.diffusion import Diffusion
    from lit_genai.errors import ConfigError
    from lit_genai.nn import UNet
    from lit_genai.pretrained import PretrainedTextEncoder

    checkpoint = fitted / "runs" / "t2i-tiny" / "checkpoints" / "last.ckpt"
    encoder = PretrainedTextEncoder(str(checkpoint))
    trained = load(fitted / "runs" / "t2i-tiny")  # its EMA weights, as the encoder takes them
    ids, mask = encoder.tokenize(PROMPTS)
    reference = trained.net.text_encoder(ids, mask)
    assert all(torch.equal(a, b) for a, b in zip(encoder(ids, mask), reference, strict=True))
    net = UNet(3, base_channels=8, channel_mult=[1], num_groups=4, attention_levels=[], text_encoder=encoder)
    module = Diffusion(net, sample_shape=(3, 16, 16), num_timesteps=50, beta_schedule="cosine")
    module.net.train()
    assert module.conditions == ("text",) and not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())
    optimised = {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in encoder.parameters()}
    with pytest.raises(ConfigError, match="does not know: purple"):
        module.sample(1, cond={"text": ["a purple star"]}, steps=1)  # the trained model's words
    (tmp_path / "x.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a checkpoint"):
        PretrainedTextEncoder(str(tmp_path / "x.ckpt"))
