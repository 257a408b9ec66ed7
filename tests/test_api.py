"""``lit_genai.load`` / ``generate`` / ``save``: a trained run back in Python, with the data absent.

Each fixture fits a tiny run through the command line (seconds) and lets ``lit-genai predict`` write
its samples; the tests load the run folder and check that ``generate`` redraws predict's samples
(the same pixels, text and waveforms for the same seed), that the EMA average is what is loaded,
and that every bad input is one line.
"""

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from helpers import TINY_CLI_TRAINER, run_cli
from PIL import Image
from test_audio_module import TINY_NOTES
from test_cli import DEMO
from test_cli import TINY as DEMO_TINY

import lit_genai
from lit_genai.api.load import checkpoint_file
from lit_genai.errors import ConfigError
from lit_genai.media import Waveforms

ROOT = Path(__file__).resolve().parents[1]
TEXT_DEMO = str(ROOT / "experiments" / "ar" / "text_demo.yaml")
NOTES = str(ROOT / "experiments" / "audio" / "wavenet_notes.yaml")


def _fit_and_predict(root: Path, base: str, tiny: dict) -> Path:
    path = root / "tiny.yaml"
    path.write_text(
        yaml.safe_dump({**tiny, "trainer": {**TINY_CLI_TRAINER, "default_root_dir": str(root / "run")}})
    )
    args = ["--config", base, "--config", str(path)]
    assert run_cli(["fit", *args]) == 0
    assert run_cli(["predict", *args, "--ckpt_path", "last"]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    """The demo (class-conditional diffusion, EMA on) shrunk to 4 steps; predict wrote 6 samples."""
    return _fit_and_predict(tmp_path_factory.mktemp("image"), DEMO, DEMO_TINY)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    """A tiny character GPT on a folder of two .txt files, which is deleted after predict."""
    root = tmp_path_factory.mktemp("text")
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    (corpus / "b.txt").write_text("pack my box with five dozen liquor jugs! " * 40)
    tiny = {
        "model": {
            "init_args": {
                "net": {
                    "init_args": {"vocab_size": 29, "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}
                },
                "sampling": {"max_new_tokens": 12},
            }
        },
        "data": {
            "init_args": {
                "name": None,
                "path": str(corpus),
                "block_size": 16,
                "batch_size": 4,
                "predict_samples": 3,
            }
        },
        "samples": {"num_samples": 2},
    }
    run = _fit_and_predict(root, TEXT_DEMO, tiny)
    shutil.rmtree(corpus)  # the data is gone: load must not need it
    return run


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory) -> Path:
    """experiments/audio/wavenet_notes.yaml shrunk to seconds (tests/test_audio_module.py's), 2 samples."""
    tiny = copy.deepcopy(TINY_NOTES)
    tiny["data"]["init_args"]["predict_samples"] = 2
    return _fit_and_predict(tmp_path_factory.mktemp("audio"), NOTES, tiny)


def _png(path: Path) -> torch.Tensor:
    """A grey sample's PNG as uint8 (1, H, W) (torchvision's save_image writes grey as RGB)."""
    array = np.asarray(Image.open(path))
    return torch.from_numpy((array if array.ndim == 2 else array[..., 0]).copy())[None]


# ---------------------------------------------------------------------- images


def test_generate_redraws_predicts_images_from_the_run_folder_with_the_ema_weights(image_run):
    module = lit_genai.load(image_run)
    assert module.ema_loaded and not module.training
    assert not any(p.requires_grad for p in module.parameters())
    predicted = sorted((image_run / "predictions").glob("sample_*.png"))
    assert len(predicted) == 6
    images = lit_genai.generate(module, 6, seed=module.hparams.seed)  # labels i % 10, as predict
    assert images.dtype == torch.uint8 and images.shape == (6, 1, 28, 28)
    for image, path in zip(images, predicted, strict=True):
        assert torch.equal(image, _png(path))
    # One sample alone, by its index, is the same as inside the batch.
    assert torch.equal(lit_genai.generate(module, 1, seed=module.hparams.seed, start=3)[0], images[3])


def test_save_writes_the_files_predict_writes_byte_for_byte(image_run, tmp_path):
    module = lit_genai.load(image_run)
    images = lit_genai.generate(module, 6, seed=module.hparams.seed)
    written = lit_genai.save(images, tmp_path / "out", nrow=10)  # predict: a row per class
    assert {p.name for p in written} == {f"sample_{i:05d}.png" for i in range(6)} | {"grid.png"}
    for path in written:
        assert path.read_bytes() == (image_run / "predictions" / path.name).read_bytes()
    (grid,) = lit_genai.save(images, tmp_path / "one.png", nrow=10)
    assert grid.read_bytes() == (image_run / "predictions" / "grid.png").read_bytes()


def test_the_ema_average_is_loaded_and_ema_false_gives_the_training_weights(image_run):
    checkpoint = torch.load(checkpoint_file(image_run), weights_only=True)
    shadow = checkpoint["callbacks"]["EMA"]["shadow"]
    averaged, trained = lit_genai.load(image_run), lit_genai.load(image_run, ema=False)
    differs = 0
    for name, value in shadow.items():
        assert torch.equal(averaged.net.state_dict()[name], value)
        assert torch.equal(trained.net.state_dict()[name], checkpoint["state_dict"][f"net.{name}"])
        differs += not torch.equal(value, checkpoint["state_dict"][f"net.{name}"])
    assert differs > 0  # the average is not the training weights after 4 steps
    assert not trained.ema_loaded


def test_options_labels_and_batches(image_run):
    module = lit_genai.load(image_run)
    by_index = lit_genai.generate(module, 4, seed=1, cond=7, steps=2)
    assert torch.equal(by_index, lit_genai.generate(module, 4, seed=1, cond="7", steps=2))
    assert torch.equal(by_index, lit_genai.generate(module, 4, seed=1, cond=[7] * 4, steps=2, batch_size=3))
    assert not torch.equal(by_index, lit_genai.generate(module, 4, seed=1, cond=7, steps=3))
    with pytest.raises(ConfigError, match="the options are: sampler, steps") as error:
        lit_genai.generate(module, 2, stepz=2)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="not one of the model's 10 classes"):
        lit_genai.generate(module, 2, cond="cat")
    with pytest.raises(ConfigError, match="3 labels for 2 samples"):
        lit_genai.generate(module, 2, cond=[1, 2, 3])


def test_load_takes_a_checkpoint_file_or_the_checkpoints_folder_and_a_device(image_run):
    files = [image_run / "checkpoints" / "last.ckpt", image_run / "checkpoints"]
    for path in files:
        module = lit_genai.load(str(path), device=torch.device("cpu"))
        assert module.checkpoint_path.endswith("last.ckpt") and module.device.type == "cpu"


# ---------------------------------------------------------------------- text and audio, data absent


def test_text_comes_back_without_the_corpus(text_run):
    assert not (text_run.parent / "corpus").exists()
    module = lit_genai.load(text_run)
    texts = lit_genai.generate(module, 3, seed=module.hparams.seed)
    assert isinstance(texts, list) and len(texts) == 3
    for i, text in enumerate(texts):  # predict's files hold the same text
        assert (text_run / "predictions" / f"sample_{i:05d}.txt").read_text() == text
    assert set("".join(texts)) <= set(
        "the quick brown fox jumps over the lazy dog. pack my box with five dozen liquor jugs!"
    )


def test_audio_comes_back_as_waveforms_at_the_datas_rate(audio_run):
    module = lit_genai.load(audio_run)
    clips = lit_genai.generate(module, 2, seed=module.hparams.seed)
    assert isinstance(clips, Waveforms) and len(clips) == 2
    written = lit_genai.save(clips, audio_run / "again")  # WAVs and spectrograms, as predict writes them
    assert [p.name for p in written] == ["sample_00000.wav", "sample_00001.wav"]
    for name in [f"sample_{i:05d}.{suffix}" for i in range(2) for suffix in ("wav", "png")]:
        assert (audio_run / "again" / name).read_bytes() == (audio_run / "predictions" / name).read_bytes()
    assert module.class_names == ["flute", "clarinet", "bell", "pluck"]  # the data's, linked at fit
    by_name = lit_genai.generate(module, 1, seed=5, cond="bell").samples
    assert torch.equal(by_name, lit_genai.generate(module, 1, seed=5, cond=2).samples)
    (one,) = lit_genai.save(Waveforms(clips.samples[:1], clips.sample_rate), audio_run / "one.wav")
    assert sf.info(one).samplerate == clips.sample_rate


# ---------------------------------------------------------------------- bad input: one line each


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_missing_corrupt_and_foreign_files_are_one_line(image_run, tmp_path):
    with pytest.raises(ConfigError) as error:
        lit_genai.load(tmp_path / "nothing.ckpt")
    assert "no such checkpoint file" in _one_line(error)
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(ConfigError) as error:
        lit_genai.load(empty)
    assert "no checkpoint in this folder" in _one_line(error)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ConfigError) as error:
        lit_genai.load(bad)
    assert "truncated or corrupt" in _one_line(error)


def test_a_checkpoint_without_its_config_or_of_another_model_is_one_line(image_run, tmp_path):
    checkpoint = torch.load(checkpoint_file(image_run), weights_only=True)
    alone = tmp_path / "alone.ckpt"
    torch.save({**checkpoint, "hyper_parameters": {}}, alone)  # no config.yaml beside it, no class
    with pytest.raises(ConfigError) as error:
        lit_genai.load(alone)
    assert "no config.yaml" in _one_line(error)
    # With the hyperparameters lit-genai fit saved, the checkpoint alone is enough.
    whole = tmp_path / "whole.ckpt"
    torch.save(checkpoint, whole)
    alone_module = lit_genai.load(whole)
    assert type(alone_module).__name__ == "Diffusion" and alone_module.ema_loaded
    assert lit_genai.generate(alone_module, 1, steps=2).shape == (1, 1, 28, 28)
    # A run folder whose config.yaml builds another model.
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint_file(image_run), other / "checkpoints" / "last.ckpt")
    config = yaml.safe_load((image_run / "config.yaml").read_text())
    config["model"]["class_path"] = "lit_genai.diffusion.EDM"
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as error:
        lit_genai.load(other)
    assert "config.yaml builds lit_genai.diffusion.EDM" in _one_line(error)


def test_a_checkpoint_of_a_model_that_does_not_generate_is_one_line(image_run, tmp_path):
    from lit_genai.metrics.classifier import Classifier, DomainClassifier

    classifier = Classifier(DomainClassifier())
    run = tmp_path / "classifier"
    (run / "checkpoints").mkdir(parents=True)
    net = {"class_path": "lit_genai.metrics.classifier.DomainClassifier", "init_args": {}}
    hparams = {"_class_path": "lit_genai.metrics.classifier.Classifier", "net": net}
    torch.save(
        {"state_dict": classifier.state_dict(), "hyper_parameters": hparams},
        run / "checkpoints" / "last.ckpt",
    )
    with pytest.raises(ConfigError) as error:
        lit_genai.load(run)
    assert "neither generates nor autoencodes" in _one_line(error)
