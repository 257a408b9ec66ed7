"""Media routes: images, text and audio from a model to TensorBoard, W&B (offline) and files; one
route per modality, and ``lit_genai.media`` at the bottom of the import graph.

The text and audio toys (tests/toys.py) stand in for the paradigms that follow; a tiny image toy
below checks that images keep their route, also without a data module (``to_uint8`` fallback).
"""

import io
import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile
import torch
from helpers import quiet_trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader
from toys import AudioToyData, AudioToyModel, TextToyData, TextToyModel

from lit_genai import media, paradigm
from lit_genai.callbacks import SampleLogger, SampleWriter
from lit_genai.errors import ConfigError
from lit_genai.media import to_uint8


class _ImageToy(L.LightningModule):
    """Images (n, 1, 8, 8) in [-1, 1] from the generator; one trainable number."""

    modality = "image"
    ema_target = None
    num_classes = 0
    sampling_options: tuple[str, ...] = ()
    sampling_settings = paradigm.sampling_settings
    predict_step = paradigm.predict_step

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.w = nn.Parameter(torch.zeros(()))

    def sample(self, n, *, cond=None, generator=None, **options):
        return torch.tanh(paradigm.randn((n, 1, 8, 8), generator, self.device))

    def training_step(self, batch, batch_idx):
        return (self.w - batch.mean()) ** 2

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", (self.w - batch.mean()) ** 2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path, model, datamodule=None, loaders=None, num_samples=3):
    """Two training steps and one validation under a TensorBoardLogger; returns (SampleLogger, event dir)."""
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    callback = SampleLogger(num_samples=num_samples, seed=0)
    trainer = quiet_trainer(
        tmp_path, [callback], logger=logger, max_steps=2, limit_train_batches=2, limit_val_batches=1
    )
    if datamodule is not None:
        trainer.fit(model, datamodule=datamodule)
    else:
        trainer.fit(model, train_dataloaders=loaders, val_dataloaders=loaders)
    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"))
    events.Reload()
    return callback, events


def _fixed_samples(model, n, seed=0):
    """What SampleLogger draws: n samples from one generator seeded ``seed``."""
    return model.sample(n, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- during fit: TensorBoard and files


def test_text_samples_reach_tensorboard_and_a_listing(tmp_path):
    model, data = TextToyModel(), TextToyData()
    callback, events = _fit(tmp_path, model, data)
    texts = data.decode(_fixed_samples(model, 3))
    assert len(set(texts)) == 3  # distinct samples, so a mix-up would show

    (entry,) = events.Tensors("samples/text_summary")
    shown = entry.tensor_proto.string_val[0].decode()
    assert entry.step == 2
    assert all(f"    {text}" in shown for text in texts)  # each sample as a literal block
    assert callback.last_path == tmp_path / "samples" / "epoch=0000-step=000002.txt"
    listing = callback.last_path.read_text()
    assert listing.split("\n")[:2] == ["==> sample_00000 <==", texts[0]]
    assert all(text in listing for text in texts)


def test_audio_samples_reach_tensorboard_with_their_rate_and_wav_files(tmp_path):
    rate, frames = 11025, 1500  # not the defaults, so a hard-coded rate or length shows
    model = AudioToyModel(sample_rate=rate, num_frames=frames)
    callback, events = _fit(tmp_path, model, AudioToyData(sample_rate=rate, num_frames=frames))

    assert sorted(events.Tags()["audio"]) == ["samples/0", "samples/1", "samples/2"]
    (clip,) = events.Audio("samples/1")
    assert (clip.sample_rate, clip.length_frames, clip.step) == (rate, frames, 2)

    folder = callback.last_path
    assert folder == tmp_path / "samples" / "epoch=0000-step=000002"
    expected = _fixed_samples(model, 3).numpy()  # (3, T)
    for i in range(3):
        wave, sr = soundfile.read(folder / f"sample_{i:05d}.wav", dtype="float32")
        assert sr == rate and wave.shape == (frames,)
        np.testing.assert_allclose(wave, expected[i], atol=1e-4)  # 16-bit PCM
        with Image.open(folder / f"sample_{i:05d}.png") as picture:
            assert picture.mode == "RGB" and picture.width > 100 and picture.height == 257


def test_image_samples_without_a_data_module_fall_back_to_uint8(tmp_path):
    model = _ImageToy()
    loader = DataLoader(torch.zeros(8, 1, 8, 8), batch_size=4)
    callback, events = _fit(tmp_path, model, loaders=loader, num_samples=4)

    grid = media.image_grid(to_uint8(_fixed_samples(model, 4)))  # (3, 22, 22): 2 x 2 images, padded
    (entry,) = events.Images("samples")
    shown = np.asarray(Image.open(io.BytesIO(entry.encoded_image_string)).convert("RGB"))
    np.testing.assert_array_equal(shown, grid.permute(1, 2, 0).numpy())
    assert callback.last_path == tmp_path / "samples" / "epoch=0000-step=000002.png"
    np.testing.assert_array_equal(np.asarray(Image.open(callback.last_path)), shown)


def test_text_and_audio_need_a_decode():
    ids = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ConfigError, match="'text' but there is no data module to decode"):
        media.to_media(None, "text", ids)
    with pytest.raises(ConfigError, match="LightningDataModule has no decode.*returns Waveforms"):
        media.to_media(L.LightningDataModule(), "audio", torch.zeros(2, 5))
    assert media.to_media(None, "image", torch.ones(1, 1, 2, 2)).eq(255).all()


def test_a_decode_returning_the_wrong_medium_is_named():
    with pytest.raises(TypeError, match="TextToyData.decode must return Waveforms"):
        media.to_media(TextToyData(), "audio", torch.zeros(2, 3, dtype=torch.long))


def test_every_modality_has_one_route():
    assert set(media.ROUTES) == set(paradigm.MODALITIES)
    assert all(route.modality == modality for modality, route in media.ROUTES.items())
    with pytest.raises(ConfigError, match="'video': there is a media route for image, text, audio only"):
        media.to_media(None, "video", torch.zeros(1, 3))


def test_routes_write_one_file_per_sample_and_one_for_all(tmp_path):
    names = media.sample_names([0, 7])
    cases = {
        "image": torch.zeros(2, 1, 4, 4, dtype=torch.uint8),
        "text": ["one", "two"],
        "audio": media.Waveforms(torch.zeros(2, 64), sample_rate=8000),
    }
    for modality, medium in cases.items():
        route = media.ROUTES[modality]
        assert route.is_medium(medium)
        written = route.write(tmp_path / modality, names, medium)
        assert [p.stem for p in written] == ["sample_00000", "sample_00007"]
        whole = route.write_all(tmp_path / modality / "all", names, medium)
        assert whole.exists() and whole.stem == "all", modality
    assert (tmp_path / "text" / "all.txt").read_text().startswith("==> sample_00000 <==\none\n")
    assert media.ROUTES["text"].join([["a"], ["b", "c"]]) == ["a", "b", "c"]


def test_media_sits_at_the_bottom_of_the_import_graph():
    code = (
        "import sys, lit_genai.media; print(' '.join(m for m in sys.modules if m.startswith('lit_genai.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    inside = {m.split(".")[1] for m in done.stdout.split()}
    assert inside == {"errors", "media"}, inside


def test_spectrogram_peaks_at_the_tone():
    rate, hz = 8000, 1000.0
    wave = torch.sin(2 * torch.pi * hz * torch.arange(4000) / rate)
    db = media.spectrogram(wave, n_fft=512)  # (257, frames)
    assert db.shape[0] == 257
    assert db[:, db.shape[1] // 2].argmax().item() == round(hz / rate * 512)  # bin 64


# ---------------------------------------------------------------------- predict: one file per sample index


def _predict(tmp_path, model, data):
    writer = SampleWriter(output_dir=str(tmp_path / "out"))
    quiet_trainer(tmp_path, [writer]).predict(model, datamodule=data, return_predictions=False)
    return tmp_path / "out", writer


def test_predict_writes_one_txt_per_sample_and_a_listing(tmp_path):
    model, data = TextToyModel(seed=7), TextToyData(predict_samples=5, batch_size=2)
    out, writer = _predict(tmp_path, model, data)

    names = [f"sample_{i:05d}" for i in range(5)]
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{n}.txt" for n in names] + ["samples.txt"])
    for i, name in enumerate(names):  # sample i is drawn from seed + i, whatever its batch
        expected = data.decode(model.sample(1, generator=paradigm.sample_generators(7, [i])))[0]
        assert (out / f"{name}.txt").read_text() == expected
    listing = (out / "samples.txt").read_text()
    assert [line for line in listing.split("\n") if line.startswith("==>")] == [f"==> {n} <==" for n in names]
    assert len(writer.written) == 5


def test_predict_writes_a_wav_and_a_spectrogram_per_sample(tmp_path):
    rate = 16000
    model = AudioToyModel(sample_rate=rate, num_frames=800, seed=3)
    out, _ = _predict(tmp_path, model, AudioToyData(sample_rate=rate, predict_samples=3, batch_size=2))

    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"sample_{i:05d}.{ext}" for i in range(3) for ext in ("wav", "png")
    )
    for i in range(3):
        wave, sr = soundfile.read(out / f"sample_{i:05d}.wav", dtype="float32")
        assert sr == rate and wave.shape == (800,)
        expected = model.sample(1, generator=paradigm.sample_generators(3, [i]))[0]
        np.testing.assert_allclose(wave, expected.numpy(), atol=1e-4)
        with Image.open(out / f"sample_{i:05d}.png") as picture:
            assert picture.height == 257 and picture.width > 100


def test_predict_writes_images_named_by_index_and_a_grid(tmp_path):
    class Indices(L.LightningDataModule):  # predict indices only: the to_uint8 fallback
        def predict_dataloader(self):
            return DataLoader(torch.arange(5), batch_size=2)

    out, _ = _predict(tmp_path, _ImageToy(seed=1), Indices())
    assert sorted(p.name for p in out.iterdir()) == ["grid.png"] + [f"sample_{i:05d}.png" for i in range(5)]
    with Image.open(out / "grid.png") as grid:
        assert grid.size == (3 * 10 + 2, 2 * 10 + 2)  # 3 per row (square), 2 rows, padding 2


# ---------------------------------------------------------------------- W&B offline: one run, all three media


def test_wandb_offline_run_holds_image_audio_and_text_media(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    import wandb

    wandb.finish()  # WandbLogger reuses a run still open from an earlier test; start a fresh one
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="lit-genai-test")
    trainer = quiet_trainer(tmp_path, logger=logger)
    texts = ["the cat sat", "a dog ran"]
    tone = torch.sin(torch.linspace(0, 100, 1200))  # (T,); W&B stores equal clips once, so two loudnesses
    waves = media.Waveforms(torch.stack([0.5 * tone, 0.25 * tone]), sample_rate=12000)
    try:
        media.log_images(trainer, "samples/images", torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
        media.log_audio(trainer, "samples/audio", waves)
        media.log_text(trainer, "samples/text", texts)
        files = Path(logger.experiment.dir)  # <save_dir>/wandb/offline-run-*/files
    finally:
        wandb.finish()

    assert len(list((files / "media" / "images").rglob("*.png"))) == 1  # the grid
    clips = sorted((files / "media" / "audio").rglob("*.wav"))
    assert len(clips) == 2
    wave, sr = soundfile.read(clips[0])
    assert sr == 12000 and wave.shape == (1200,)
    (table,) = (files / "media" / "table").rglob("*.table.json")
    assert json.loads(table.read_text())["data"] == [[0, texts[0]], [1, texts[1]]]
