"""WaveNet through NextToken and the command line: training lowers the loss, predict writes WAVs at
the data's rate, samples reach W&B (offline) and TensorBoard as audio."""

import functools
from pathlib import Path

import pytest
import soundfile
import torch
import yaml
from helpers import TINY_CLI_TRAINER, quiet_trainer, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_genai import paradigm
from lit_genai.ar.module import NextToken, NextTokenSampling
from lit_genai.data.audio import ProceduralNotes, mu_law_encode
from lit_genai.errors import ConfigError
from lit_genai.nn.wavenet import WaveNet

ROOT = Path(__file__).resolve().parents[1]
NOTES = str(ROOT / "experiments" / "audio" / "wavenet_notes.yaml")
NEW = 40  # samples generated after the prompt in these tests
RATE = yaml.safe_load(Path(NOTES).read_text())["data"]["init_args"]["sample_rate"]  # the recipe's Hz


# experiments/audio/wavenet_notes.yaml shrunk to seconds (the run folder is added per test).
TINY_NOTES = {
    "model": {
        "init_args": {
            "net": {
                "init_args": {
                    "residual_channels": 8,
                    "gate_channels": 8,
                    "skip_channels": 8,
                    "layers_per_stack": 3,
                    "stacks": 1,
                    "block_size": 64,
                }
            },
            "sampling": {"max_new_tokens": NEW},
        }
    },
    "data": {
        "init_args": {
            "num_clips": 8,
            "val_clips": 4,
            "crop_length": 64,
            "batch_size": 4,
            "clip_seconds": 0.1,
            "predict_samples": 3,
        }
    },
    "samples": {"num_samples": 2},
}


@pytest.fixture()
def tiny_notes(tmp_path):
    """experiments/audio/wavenet_notes.yaml shrunk to seconds, in ``tmp_path / "run"``."""
    tiny = {**TINY_NOTES, "trainer": {**TINY_CLI_TRAINER, "default_root_dir": str(tmp_path / "run")}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny))
    return ["--config", NOTES, "--config", str(path)]


def test_a_short_cpu_run_on_the_notes_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    data = ProceduralNotes(
        num_clips=16, val_clips=4, clip_seconds=0.25, crop_length=128, batch_size=8, steps_per_epoch=50
    )
    net = WaveNet(
        residual_channels=16,
        gate_channels=16,
        skip_channels=16,
        layers_per_stack=6,
        stacks=1,
        num_classes=4,
        block_size=128,
    )
    model = NextToken(
        net,
        vocab_size=256,
        block_size=128,
        num_classes=4,
        modality="audio",
        weight_decay=0.0,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
    )
    trainer = quiet_trainer(tmp_path, max_steps=100, limit_val_batches=2)
    before = trainer.validate(model, data, verbose=False)[0]["val/loss"]
    trainer.fit(model, data)
    after = trainer.validate(model, data, verbose=False)[0]["val/loss"]
    assert before == pytest.approx(5.545, abs=0.3)  # about ln 256 at the start
    assert after < before - 0.5


def test_a_vocoder_samples_from_the_mel_frames_given_as_its_mels_condition():
    torch.manual_seed(0)
    net = WaveNet(
        residual_channels=8,
        gate_channels=8,
        skip_channels=8,
        layers_per_stack=3,
        stacks=1,
        local_channels=4,
        hop_length=4,
        block_size=64,
    )
    model = NextToken(
        net,
        vocab_size=256,
        block_size=64,
        modality="audio",
        sampling=NextTokenSampling(max_new_tokens=11, prompt="128"),
    )
    assert model.conditions == ("mels",) and model.num_classes == 0
    mels = torch.randn(3, 4, 3, generator=torch.Generator().manual_seed(1))  # 3 frames x hop 4 = 12 samples
    seeds = lambda rows: paradigm.sample_generators(0, rows)  # noqa: E731
    waves = model.sample(3, cond={"mels": mels}, generator=seeds(range(3)))
    assert waves.shape == (3, 1 + 11) and (waves[:, 0] == 128).all()
    assert torch.equal(waves, model.sample(3, cond={"mels": mels}, generator=seeds(range(3))))
    # row i depends on its own frames and generator only, and the frames steer it
    assert torch.equal(waves[1:2], model.sample(1, cond={"mels": mels[1:2]}, generator=seeds([1])))
    louder = model.sample(3, cond={"mels": 10 * mels}, generator=seeds(range(3)))
    assert not torch.equal(louder, waves)
    for cond in ({"label": torch.zeros(1).long()}, torch.zeros(1).long()):  # a bare tensor is a label
        with pytest.raises(ConfigError, match=r"unknown condition\(s\) label; this model takes: mels"):
            model.sample(1, cond=cond)


def test_predict_writes_wavs_at_the_datas_rate_starting_with_the_prompt(tiny_notes, tmp_path):
    assert run_cli(["fit", *tiny_notes]) == 0
    assert run_cli(["predict", *tiny_notes, "--ckpt_path", "last"]) == 0
    out = tmp_path / "run" / "predictions"
    assert sorted(p.name for p in out.glob("sample_*.wav")) == [f"sample_{i:05d}.wav" for i in range(3)]
    for i in range(3):
        wave, rate = soundfile.read(out / f"sample_{i:05d}.wav", dtype="float32")
        assert rate == RATE and wave.shape == (1 + NEW,)  # the prompt (one silent sample) + the new ones
        assert mu_law_encode(torch.tensor(wave[:1])).item() == 128
        assert (out / f"sample_{i:05d}.png").is_file()  # its spectrogram


def test_samples_reach_wandb_offline_and_tensorboard_as_audio(tiny_notes, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    import wandb

    wandb.finish()
    loggers = ["--trainer.logger", "lightning.pytorch.loggers.WandbLogger"]
    loggers += ["--trainer.logger+=lightning.pytorch.loggers.TensorBoardLogger"]
    loggers += ["--trainer.logger.save_dir", str(tmp_path / "tb")]
    try:
        assert run_cli(["fit", *tiny_notes, *loggers]) == 0
    finally:
        wandb.finish()
    (run,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    assert list((run / "files" / "media" / "audio").rglob("*.wav")), "no audio in the W&B run folder"
    (events_dir,) = {p.parent for p in (tmp_path / "tb").rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(events_dir))
    events.Reload()
    assert sorted(events.Tags()["audio"]) == ["samples/0", "samples/1"]
    (clip,) = events.Audio("samples/0")[-1:]
    assert (clip.sample_rate, clip.length_frames) == (RATE, 1 + NEW)


def test_predict_from_a_checkpoint_whose_hparams_hold_a_linked_name_the_model_lacks(tiny_notes, tmp_path):
    # The CLI stores the model config after the data links, so the checkpoint holds the audio data's
    # sample_shape although NextToken takes none; merging it back must not break predict.
    assert run_cli(["fit", *tiny_notes]) == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    hparams = torch.load(checkpoint, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert "sample_shape" in hparams
    assert run_cli(["predict", *tiny_notes, "--ckpt_path", str(checkpoint)]) == 0
    assert len(list((tmp_path / "run" / "predictions").glob("sample_*.wav"))) == 3


def test_the_pitch_benchmark_reads_the_runs_rate_and_scores_the_data_as_notes(tiny_notes, tmp_path, capsys):
    # benchmarks/wavenet_notes_pitch.py, which the README's "note-like" numbers come from
    import importlib.util
    import sys
    from unittest import mock

    path = ROOT / "benchmarks" / "wavenet_notes_pitch.py"
    spec = importlib.util.spec_from_file_location("wavenet_notes_pitch", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = bench.data_waves(RATE, 2)
    for waves, floor in zip(data, (0.95, 0.95, 0.4, 0.95), strict=True):  # flute, clarinet, bell, pluck
        assert len(waves) == 2 and bench.score(waves, RATE)[0] > floor

    assert run_cli(["fit", *tiny_notes]) == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert bench.init_args(bench.run_config(checkpoint), "data")["sample_rate"] == RATE
    out = tmp_path / "pitch"
    argv = ["wavenet_notes_pitch.py", str(checkpoint), "--samples", "1", "--threads", "1", "--out", str(out)]
    with mock.patch.object(sys, "argv", argv):
        bench.main()
    temperature = yaml.safe_load(Path(NOTES).read_text())["model"]["init_args"]["sampling"]["temperature"]
    printed = capsys.readouterr().out
    assert printed.count(f"T={temperature} ") == 4  # a line per instrument
    assert len(list(out.glob(f"T{temperature}_*.wav"))) == 4
    assert (out / f"T{temperature}_spectrograms.png").is_file()
    wave, rate = soundfile.read(out / f"T{temperature}_flute_0.wav")
    assert rate == RATE and wave.shape == (1 + NEW,)
