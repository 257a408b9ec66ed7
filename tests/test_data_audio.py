"""Audio data: mu-law (WaveNet eq. 1), resampling, trimming, log-mel frames, AudioFolder, the named sets'
offline errors, ProceduralNotes."""

import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from helpers import quiet_trainer
from jsonargparse import ArgumentParser
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

from lit_genai.ar.module import NextToken
from lit_genai.data.audio import (
    INSTRUMENTS,
    LJSPEECH_URL,
    NUM_NOTES,
    SPEECH_COMMANDS_URL,
    AudioFolder,
    ProceduralNotes,
    hz_to_mel,
    log_mel,
    mel_filterbank,
    mel_to_hz,
    midi_to_hz,
    mu_law_decode,
    mu_law_encode,
    resample,
    resample_factors,
    synth_note,
    trim_silence,
)
from lit_genai.errors import ConfigError, DataNotFoundError
from lit_genai.media import Waveforms
from lit_genai.nn.transformer import GPT

MU = 255


def _f(x):
    return np.sign(x) * np.log1p(MU * np.abs(x)) / np.log1p(MU)


def _f_inv(y):
    return np.sign(y) * np.expm1(np.abs(y) * np.log1p(MU)) / MU


def _tone(freq, seconds, rate, amplitude=0.5):
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(wave, rate):
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()]


# ---------------------------------------------------------------------- mu-law


def test_mu_law_round_trip_within_half_a_bin():
    x = np.linspace(-1, 1, 20001)
    ids = mu_law_encode(torch.from_numpy(x))
    assert ids.dtype == torch.int64 and int(ids.min()) == 0 and int(ids.max()) == 255
    assert mu_law_encode(torch.tensor([0.0])).item() == 128  # round((0 + 1) / 2 * 255)
    assert torch.all(ids.diff() >= 0)  # monotone
    back = mu_law_decode(ids).double().numpy()
    # The companded value is rounded to the nearest of 256 levels 2 / 255 apart: an error of at most
    # 1 / 255 in f(x), i.e. the half-width of x's bin mapped back through f^-1.
    y = _f(x)
    half_width = np.maximum(
        np.abs(_f_inv(np.clip(y + 1 / MU, -1, 1)) - x), np.abs(_f_inv(np.clip(y - 1 / MU, -1, 1)) - x)
    )
    assert np.all(np.abs(x - back) <= half_width + 1e-7)
    # Small values are finely quantised, loud ones coarsely (the point of mu-law).
    assert abs(back[np.argmin(np.abs(x - 0.01))] - 0.01) < 5e-4 and np.abs(x - back).max() > 0.01
    # Decoding the ids of the bins' centres gives them back exactly; values beyond [-1, 1] are clipped.
    centres = mu_law_decode(torch.arange(256))
    assert torch.equal(mu_law_encode(centres), torch.arange(256))
    assert mu_law_encode(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]


# ---------------------------------------------------------------------- resampling and trimming


@pytest.mark.parametrize("orig, new", [(44100, 16000), (22050, 16000), (8000, 22050), (16000, 16000)])
def test_resample_keeps_a_sines_frequency_and_the_length(orig, new):
    wave = _tone(440.0, 0.5, orig)
    out = resample(wave, orig, new)
    up, down = resample_factors(orig, new)
    assert out.dtype == np.float32 and len(out) == math.ceil(len(wave) * up / down)
    assert abs(_peak_hz(out, new) - 440.0) <= new / len(out)  # within one FFT bin
    middle = out[len(out) // 4 : 3 * len(out) // 4]
    assert abs(np.abs(middle).max() - 0.5) < 0.01  # amplitude kept (away from the filter's edges)


def test_resample_factors_refuse_absurd_ratios():
    assert resample_factors(44100, 16000) == (160, 441)
    assert resample_factors(48000, 22050) == (147, 320)
    for orig, new in [(44100, 0), (44100, -16000), (0, 16000)]:
        with pytest.raises(ValueError, match="positive"):
            resample_factors(orig, new)
    with pytest.raises(ValueError, match="16001/44100"):
        resample_factors(44100, 16001)


def test_trim_silence_drops_leading_and_trailing_quiet_frames():
    rate = 8000
    loud = _tone(300.0, 0.25, rate, amplitude=0.8)  # 2000 samples
    quiet = _tone(300.0, 0.1, rate, amplitude=0.8 * 10 ** (-50 / 20))  # 50 dB below
    wave = np.concatenate([np.zeros(1000, np.float32), quiet, loud, np.zeros(1000, np.float32)])
    trimmed = trim_silence(wave, threshold_db=-40, frame=100)
    assert len(trimmed) == len(loud)  # the loud tone starts and ends on frame boundaries here
    np.testing.assert_array_equal(trimmed, loud)
    kept = trim_silence(wave, threshold_db=-60, frame=100)  # the quiet tone is loud enough at -60 dB
    np.testing.assert_array_equal(kept, np.concatenate([quiet, loud]))
    assert trim_silence(np.zeros(500, np.float32)).size == 0
    assert trim_silence(np.full(10, 1e-3, np.float32), -40, frame=4).size == 10  # nothing is below its peak


# ---------------------------------------------------------------------- log-mel


@pytest.mark.parametrize("T", [1, 255, 256, 257, 1000, 4096])
def test_log_mel_shape_is_ceil_t_over_hop(T):
    out = log_mel(torch.randn(3, T) * 0.1, 16000, n_mels=40, n_fft=512, hop_length=256)
    assert out.shape == (3, 40, math.ceil(T / 256)) and out.dtype == torch.float32
    single = log_mel(torch.randn(T) * 0.1, 16000, n_mels=40, n_fft=512, hop_length=256)
    assert single.shape == (40, math.ceil(T / 256))


def test_log_mel_frames_align_with_sample_blocks_and_clamp_silence():
    hop = 128
    wave = torch.zeros(16 * hop)
    wave[5 * hop : 6 * hop] = torch.from_numpy(_tone(1000.0, hop / 16000, 16000))  # block 5 only
    out = log_mel(wave, 16000, n_mels=40, n_fft=512, hop_length=hop)
    assert int(out.exp().sum(0).argmax()) == 5  # frame i is centred on samples [i hop, (i + 1) hop)
    silent = log_mel(torch.zeros(1000), 16000, n_mels=40, n_fft=512, hop_length=hop)
    assert torch.allclose(silent, torch.full_like(silent, math.log(1e-5)))


@pytest.mark.parametrize("scale", ["slaney", "htk"])
def test_mel_scale_and_filterbank(scale):
    assert torch.allclose(
        mel_to_hz(hz_to_mel(torch.tensor([50.0, 700.0, 1000.0, 6000.0]), scale), scale),
        torch.tensor([50.0, 700.0, 1000.0, 6000.0], dtype=torch.float64),
    )
    # Slaney: 15 mels at 1 kHz (linear below); HTK: 2595 log10(1 + f / 700) is ~1000 at 1 kHz.
    expected = 15.0 if scale == "slaney" else 2595 * math.log10(1 + 1000 / 700)
    assert abs(float(hz_to_mel(1000.0, scale)) - expected) < 1e-9
    bank = mel_filterbank(1024, 40, 16000, mel_scale=scale, norm="slaney" if scale == "slaney" else None)
    assert bank.shape == (40, 513) and bool((bank >= 0).all())
    if scale == "slaney":  # unit area in Hz per band (bins are 16000 / 1024 Hz apart)
        areas = bank.sum(1) * 16000 / 1024
        assert torch.allclose(areas[10:], torch.ones(30), atol=0.03)
    else:
        assert torch.allclose(bank.max(1).values[10:], torch.ones(30), atol=0.1)  # unit peaks
    # A sine lights up the band whose centre is nearest its frequency.
    centres = mel_to_hz(
        torch.linspace(float(hz_to_mel(0.0, scale)), float(hz_to_mel(8000.0, scale)), 42), scale
    )[1:-1]
    out = log_mel(torch.from_numpy(_tone(2000.0, 0.25, 16000)), 16000, 40, 1024, 256, mel_scale=scale)
    assert int(out.mean(1).argmax()) == int((centres - 2000.0).abs().argmin())


# ---------------------------------------------------------------------- AudioFolder


def _write(path: Path, wave, rate, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), wave, rate, format=fmt)
    return path


def _speakers(root: Path):
    """Three speakers' folders: WAV and FLAC, 8 and 16 kHz, one stereo; 0.3-0.5 s of tones each,
    with silence around one of them."""
    rng = np.random.default_rng(0)
    files = []
    for s, speaker in enumerate(["bob", "alice", "carol"]):
        for j in range(3):
            rate = 16000 if j == 1 else 8000
            wave = _tone(200.0 + 100 * s + 37 * j, 0.3 + 0.1 * j, rate) + 0.01 * rng.standard_normal(
                int(round((0.3 + 0.1 * j) * rate))
            ).astype(np.float32)
            if j == 2:
                wave = np.stack([wave, 0.5 * wave], axis=1)  # stereo
            ext = "flac" if j == 1 else "wav"
            files.append(_write(root / speaker / f"clip{j}.{ext}", wave, rate))
    silent = np.concatenate([np.zeros(800), _tone(250.0, 0.3, 8000), np.zeros(800)]).astype(np.float32)
    files.append(_write(root / "alice" / "padded.wav", silent, 8000))
    return files


def _expected(file: Path, rate=8000, trim_db=-40.0):
    data, sr = soundfile.read(str(file), dtype="float32", always_2d=True)
    wave = resample(data.mean(1), sr, rate)
    return trim_silence(wave, trim_db, rate // 100) if trim_db is not None else wave


def test_audio_folder_batches_and_attributes(tmp_path):
    _speakers(tmp_path)
    dm = AudioFolder(
        str(tmp_path),
        sample_rate=8000,
        crop_length=400,
        batch_size=4,
        steps_per_epoch=3,
        labels="folder",
        val_fraction=0.25,
    )
    assert (dm.vocab_size, dm.block_size, dm.sample_rate, dm.modality) == (256, 400, 8000, "audio")
    assert dm.class_names == ["alice", "bob", "carol"] and dm.num_classes == 3
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 3
    tokens, labels = batches[0]
    assert tokens.shape == (4, 401) and tokens.dtype == torch.int64 and labels.shape == (4,)
    assert labels.dtype == torch.int64 and 0 <= int(tokens.min()) and int(tokens.max()) < 256
    assert set(labels.tolist()) <= {0, 1, 2}
    with_mels = AudioFolder(
        str(tmp_path),
        sample_rate=8000,
        crop_length=400,
        batch_size=4,
        steps_per_epoch=1,
        mels=True,
        n_mels=20,
        n_fft=256,
        hop_length=64,
    )
    with_mels.setup("fit")
    tokens, labels, mels = next(iter(with_mels.train_dataloader()))
    assert mels.shape == (4, 20, math.ceil(401 / 64)) == (4, 20, with_mels.mel_frames)
    assert mels.dtype == torch.float32
    # The mels are those of the crop's own waveform (before mu-law), the same crop as its tokens.
    clip, start = with_mels.val_set.index[0]
    wave = torch.from_numpy(with_mels.val_set.clips.crop(clip, start, 401))
    tokens, _, mels = with_mels.val_set[0]
    assert torch.equal(mels, log_mel(wave, 8000, 20, 256, 64)) and torch.equal(tokens, mu_law_encode(wave))


def test_audio_folder_splits_by_file_and_validates_on_consecutive_crops(tmp_path):
    files = _speakers(tmp_path)
    dm = AudioFolder(
        str(tmp_path), sample_rate=8000, crop_length=400, batch_size=2, val_fraction=0.25, labels="folder"
    )
    assert len(dm.val_files) == round(0.25 * len(files)) and len(dm.train_files) == len(files) - len(
        dm.val_files
    )
    assert set(dm.val_files.tolist()).isdisjoint(dm.train_files.tolist())
    dm.setup("fit")
    train_clips = {int(c) for c in dm.train_set.members}
    assert train_clips == set(dm.train_files.tolist())
    # Validation: consecutive crops of crop_length + 1 samples, stride crop_length, of each val file.
    expected = []
    for i in dm.val_files:
        wave = _expected(dm.files[i])
        for j in range((len(wave) - 1) // 400):
            expected.append(
                (mu_law_encode(torch.from_numpy(wave[j * 400 : j * 400 + 401])), dm.file_labels[i])
            )
    got = [(t, y) for t, y in (dm.val_set[j] for j in range(len(dm.val_set)))]
    assert len(got) == len(expected) > 0
    for (t, y), (et, ey) in zip(got, expected, strict=True):
        # The cache keeps float16: a sample may land in the next mu-law bin.
        assert (t - et).abs().max() <= 1 and int(y) == int(ey)
    # Labels are the parent folders.
    for i, f in enumerate(dm.files):
        assert dm.class_names[dm.file_labels[i]] == f.parent.name
    # The split depends on the names only: another folder with the same names splits alike.
    again = AudioFolder(str(tmp_path), sample_rate=8000, crop_length=400, val_fraction=0.25, seed=5)
    assert again.val_files.tolist() == dm.val_files.tolist()
    two = AudioFolder(str(tmp_path), sample_rate=8000, crop_length=400, val_fraction=0.01)
    assert len(two.val_files) == 1  # at least one file


def test_audio_folder_crops_repeat_under_a_seed_and_differ_across_epochs(tmp_path):
    _speakers(tmp_path)

    def epoch(seed, e):
        dm = AudioFolder(
            str(tmp_path), sample_rate=8000, crop_length=300, batch_size=4, steps_per_epoch=2, seed=seed
        )
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(e)  # what Lightning calls at the start of each epoch
        return torch.cat([t for t, _ in loader])

    first = epoch(0, 0)
    assert torch.equal(first, epoch(0, 0))
    assert not torch.equal(first, epoch(0, 1)) and not torch.equal(first, epoch(1, 0))
    # DDP shares the epoch's crops out: two ranks draw disjoint indices covering the epoch.
    dm = AudioFolder(str(tmp_path), sample_rate=8000, crop_length=300, batch_size=4, steps_per_epoch=2)
    dm.setup("fit")
    sampler = dm.train_dataloader().sampler
    ranks = [list(DistributedSamplerWrapper(sampler, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == list(range(8))


def test_audio_folder_decode_and_predict(tmp_path):
    _speakers(tmp_path)
    dm = AudioFolder(str(tmp_path), sample_rate=8000, crop_length=400, batch_size=3, predict_samples=5)
    ids = torch.randint(0, 256, (2, 100))
    out = dm.decode(ids)
    assert isinstance(out, Waveforms) and out.sample_rate == 8000 and out.samples.shape == (2, 100)
    assert torch.equal(out.samples, mu_law_decode(ids))
    with pytest.raises(ConfigError, match="256 mu-law classes"):
        dm.decode(torch.tensor([[0, 256]]))
    assert [b.tolist() for b in dm.predict_dataloader()] == [[0, 1, 2], [3, 4]]


def test_audio_folder_cache_is_written_once(tmp_path, monkeypatch):
    _speakers(tmp_path)
    AudioFolder(str(tmp_path), sample_rate=8000, crop_length=400).setup("fit")
    cache = list((tmp_path / ".lit_genai_audio").iterdir())
    assert sorted(p.suffix for p in cache) == [".f16", ".npy"]
    monkeypatch.setattr(AudioFolder, "load", lambda self, i: pytest.fail("the cache was rebuilt"))
    dm = AudioFolder(str(tmp_path), sample_rate=8000, crop_length=400)
    dm.setup("fit")
    assert len(dm.val_set) > 0
    other = AudioFolder(str(tmp_path), sample_rate=16000, crop_length=400)  # other settings: another file
    assert other._cache_paths()[0] != dm._cache_paths()[0]


def test_audio_folder_short_files_pad_and_skip(tmp_path):
    _write(tmp_path / "long.wav", _tone(300.0, 0.5, 8000), 8000)
    _write(tmp_path / "long2.wav", _tone(400.0, 0.5, 8000), 8000)
    _write(tmp_path / "short.wav", _tone(300.0, 0.05, 8000), 8000)  # 400 samples
    with pytest.raises(ConfigError, match=r"short\.wav has 400 samples.*crop_length \+ 1 = 1001"):
        AudioFolder(str(tmp_path), sample_rate=8000, crop_length=1000, val_fraction=0, short_files="error")
    dm = AudioFolder(str(tmp_path), sample_rate=8000, crop_length=1000, val_fraction=0, short_files="pad")
    dm.setup("fit")
    short = [i for i, f in enumerate(dm.files) if f.name == "short.wav"][0]
    assert dm.train_set[0][0].shape == (1001,)
    padded = dm.train_set._item(short, 0)[0]
    assert torch.all(padded[400:] == 128)  # zeros after the clip's end
    with pytest.warns(UserWarning, match="1 of 3 files"):
        skipped = AudioFolder(
            str(tmp_path), sample_rate=8000, crop_length=1000, val_fraction=0, short_files="skip"
        )
        skipped.setup("fit")
    assert short not in skipped.train_set.members.tolist()


def test_audio_folder_bad_input_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="no such folder"):
        AudioFolder(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not audio")
    with pytest.raises(DataNotFoundError, match=r"no \.wav/\.flac/\.ogg files"):
        AudioFolder(str(tmp_path / "empty"))

    good = tmp_path / "good"
    _write(good / "a.wav", _tone(300.0, 0.3, 8000), 8000)
    _write(good / "b.flac", _tone(300.0, 0.3, 8000), 8000)
    (good / "broken.wav").write_bytes(b"RIFF but not really" * 10)
    with pytest.raises(ConfigError, match=r"broken\.wav is not a readable audio file"):
        AudioFolder(str(good), sample_rate=8000, crop_length=100)
    (good / "broken.wav").unlink()

    # Long enough by its header, but mostly silence: too short once trimmed.
    quiet = np.concatenate([np.zeros(2000), _tone(300.0, 0.02, 8000)]).astype(np.float32)
    _write(good / "quiet.wav", quiet, 8000)
    dm = AudioFolder(str(good), sample_rate=8000, crop_length=1000, val_fraction=0, short_files="error")
    with pytest.raises(ConfigError, match=r"quiet\.wav has \d+ samples .* after trimming silence below -40"):
        dm.setup("fit")
    (good / "quiet.wav").unlink()

    for rate, match in [(0, "sample_rate=0 must be a positive"), (16001, r"needs the factors 16001/8000")]:
        with pytest.raises(ConfigError, match=match):
            AudioFolder(str(good), sample_rate=rate, crop_length=100)
    with pytest.raises(ConfigError, match="val_fraction"):
        AudioFolder(str(good), sample_rate=8000, crop_length=100, val_fraction=1.0)
    with pytest.raises(ConfigError, match=r"labels=folder .* sits in the audio folder itself"):
        AudioFolder(str(good), sample_rate=8000, crop_length=100, labels="folder")
    (good / "b.flac").unlink()
    with pytest.raises(ConfigError, match="has one file"):
        AudioFolder(str(good), sample_rate=8000, crop_length=100)
    with pytest.raises(ConfigError, match="mels need"):
        AudioFolder(
            str(good), sample_rate=8000, crop_length=100, val_fraction=0, mels=True, n_fft=128, hop_length=256
        )


# ---------------------------------------------------------------------- named sets


@pytest.mark.parametrize("name, url", [("ljspeech", LJSPEECH_URL), ("speech_commands", SPEECH_COMMANDS_URL)])
def test_named_sets_offline_say_how_to_get_them(tmp_path, name, url):
    with pytest.raises(DataNotFoundError) as err:
        AudioFolder(str(tmp_path), name=name)
    message = str(err.value)
    assert (
        "\n" not in message
        and url in message
        and "--data.download true" in message
        and str(tmp_path) in message
    )


def test_named_sets_read_an_archive_in_root(tmp_path):
    # LJSpeech's archive unpacks to LJSpeech-1.1/wavs; a local archive needs no network.
    staging = tmp_path / "staging"
    for i in range(2):
        _write(
            staging / "LJSpeech-1.1" / "wavs" / f"LJ001-000{i}.wav", _tone(220.0 * (i + 1), 0.3, 22050), 22050
        )
    with tarfile.open(tmp_path / "LJSpeech-1.1.tar.bz2", "w:bz2") as tar:
        tar.add(staging / "LJSpeech-1.1", arcname="LJSpeech-1.1")
    dm = AudioFolder(str(tmp_path), name="ljspeech", sample_rate=16000, crop_length=1000)
    assert [f.name for f in dm.files] == ["LJ001-0000.wav", "LJ001-0001.wav"]
    assert (tmp_path / "LJSpeech-1.1" / "wavs").is_dir() and not list(tmp_path.glob(".*partial"))
    # A damaged archive is one line too.
    (tmp_path / "speech_commands_v0.02.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(DataNotFoundError, match="unpacking .* failed .* delete it"):
        AudioFolder(str(tmp_path), name="speech_commands")
    (tmp_path / "speech_commands_v0.02.tar.gz").unlink()
    # Speech Commands: one folder per word; _background_noise_ is left out.
    words = tmp_path / "SpeechCommands" / "speech_commands_v0.02"
    for word in ["yes", "no"]:
        _write(words / word / "0a1b_nohash_0.wav", _tone(300.0, 0.2, 16000), 16000)
    _write(words / "_background_noise_" / "noise.wav", _tone(300.0, 2.0, 16000), 16000)
    sc = AudioFolder(str(tmp_path), name="speech_commands", crop_length=1000, labels="folder")
    assert sc.class_names == ["no", "yes"] and len(sc.files) == 2


# ---------------------------------------------------------------------- ProceduralNotes


def test_procedural_notes_batches_labels_and_determinism():
    dm = ProceduralNotes(num_clips=16, val_clips=8, crop_length=1000, batch_size=4, steps_per_epoch=2)
    assert (dm.vocab_size, dm.block_size, dm.sample_rate, dm.modality) == (256, 1000, 8000, "audio")
    assert dm.class_names == list(INSTRUMENTS) and dm.num_classes == 4
    dm.setup("fit")
    tokens, labels = next(iter(dm.train_dataloader()))
    assert tokens.shape == (4, 1001) and tokens.dtype == torch.int64 and labels.dtype == torch.int64
    assert len(dm.val_set) == 8 * ((8000 - 1) // 1000)  # consecutive crops of each val clip
    val_labels = torch.stack([dm.val_set[j][1] for j in range(len(dm.val_set))])
    assert val_labels.tolist() == [i % 4 for i in range(8) for _ in range(7)]
    # The same seed gives the same clips; another seed others; validation clips are not training clips.
    again = ProceduralNotes(num_clips=16, val_clips=8, crop_length=1000)
    again.setup()
    assert np.array_equal(again.clips.clip(3), dm.clips.clip(3))
    other = ProceduralNotes(num_clips=16, val_clips=8, crop_length=1000, seed=1)
    other.setup()
    assert not np.array_equal(other.clips.clip(3), dm.clips.clip(3))
    assert not np.array_equal(dm.clips.clip(0), dm.clips.clip(16))
    notes = ProceduralNotes(num_clips=16, val_clips=8, crop_length=1000, label="note", mels=True, n_mels=32)
    assert notes.num_classes == NUM_NOTES and notes.class_names[0] == "C3" and notes.class_names[-1] == "C5"
    notes.setup()
    tokens, labels, mels = notes.val_set[0]
    assert int(labels) == int(notes.meta[16, 1]) and mels.shape == (32, math.ceil(1001 / 256))
    assert isinstance(notes.decode(tokens[None]), Waveforms)


def _harmonic_energy(wave, rate, freqs):
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave)))) ** 2
    bins = np.fft.rfftfreq(len(wave), 1 / rate)
    return np.array([spectrum[np.abs(bins - f) <= 6].sum() for f in freqs])


def test_procedural_instruments_differ_spectrally():
    rate, midi = 8000, 57  # A3, 220 Hz
    f0 = midi_to_hz(midi)
    notes = {name: synth_note(name, midi, rate, 1.0, np.random.default_rng(3)) for name in INSTRUMENTS}
    for wave in notes.values():
        assert wave.shape == (8000,) and np.abs(wave).max() <= 0.9 + 1e-6
    harmonics = f0 * np.arange(1, 9)
    clarinet = _harmonic_energy(notes["clarinet"], rate, harmonics)
    assert clarinet[1::2].sum() < 1e-3 * clarinet[0::2].sum()  # odd harmonics only
    flute = _harmonic_energy(notes["flute"], rate, harmonics)
    assert flute[0] > 0.8 * flute.sum()  # a steep rolloff: mostly the fundamental
    bell = _harmonic_energy(notes["bell"], rate, f0 * np.array([0.56, 1.19, 2.74]))
    bell_harmonics = _harmonic_energy(notes["bell"], rate, f0 * np.array([1.0, 3.0, 4.0]))
    assert bell.sum() > bell_harmonics.sum()  # inharmonic partials
    pluck = notes["pluck"]  # its high harmonics die first: the spectrum darkens
    early, late = (_harmonic_energy(pluck[a : a + 2048], rate, harmonics) for a in (400, 4000))
    assert early[3:].sum() / early.sum() > 2 * late[3:].sum() / late.sum()

    # Over a data set (notes across two octaves, random envelopes and levels): the flute is always the
    # darkest (spectral centroid in units of f0), and the struck instruments darken as they ring
    # (their high partials decay first) while the blown ones keep their timbre.
    dm = ProceduralNotes(num_clips=64, val_clips=8, crop_length=1000)
    dm.setup()
    features = {c: [] for c in range(4)}
    for i in range(64):
        wave, (instrument, note) = dm.clips.clip(i), dm.meta[i]
        f0 = midi_to_hz(48 + note)
        change = _centroid(wave[400:1600], rate) / _centroid(wave[3200:4400], rate)
        features[instrument].append((_centroid(wave, rate) / f0, change))
    features = {INSTRUMENTS[c]: np.array(v) for c, v in features.items()}
    assert all(len(v) == 16 for v in features.values())
    darkest = features["flute"][:, 0].max()
    assert all(darkest < features[name][:, 0].min() for name in ("clarinet", "bell", "pluck"))
    for name in ("bell", "pluck"):
        assert features[name][:, 1].min() > 1.1
    for name in ("flute", "clarinet"):
        assert np.abs(features[name][:, 1] - 1).max() < 0.05


def _centroid(wave, rate):
    spectrum = np.abs(np.fft.rfft(wave)) ** 2
    return (spectrum * np.fft.rfftfreq(len(wave), 1 / rate)).sum() / spectrum.sum()


# ---------------------------------------------------------------------- with a token model


def test_audio_crops_train_a_next_token_model(tmp_path):
    dm = ProceduralNotes(num_clips=8, val_clips=4, crop_length=32, batch_size=4, steps_per_epoch=2)
    net = GPT(
        vocab_size=dm.vocab_size, block_size=dm.block_size, n_layer=1, n_head=2, n_embd=16, num_classes=4
    )
    model = NextToken(
        net,
        vocab_size=dm.vocab_size,
        block_size=dm.block_size,
        num_classes=dm.num_classes,
        class_names=dm.class_names,
        modality=dm.modality,
    )
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=2)
    trainer.fit(model, datamodule=dm)
    metrics = trainer.validate(model, datamodule=dm, verbose=False)[0]
    # Per crop: 32 predicted mu-law tokens, about uniform (32 ln 256) after two steps.
    assert math.isclose(metrics["val/nll_nats"], 32 * metrics["val/loss"], rel_tol=1e-4)
    assert 0.5 * 32 * math.log(256) < metrics["val/nll_nats"] < 32 * math.log(256) + 5


def test_data_signatures_parse():
    parser = ArgumentParser()
    parser.add_class_arguments(AudioFolder, "folder")
    parser.add_class_arguments(ProceduralNotes, "notes")
    config = parser.parse_args(["--folder.root", "x", "--folder.name", "ljspeech", "--notes.label", "note"])
    assert config.folder.short_files == "pad" and config.notes.label == "note"
