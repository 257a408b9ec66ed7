"""Are a notes WaveNet's samples notes? Their periodicity, instrument by instrument, against the data's.

What it measures
    For a ``lit-genai fit`` checkpoint of ``NextToken`` + ``WaveNet`` trained on
    ``data.audio.ProceduralNotes`` with ``label: instrument`` (``experiments/audio/wavenet_notes.yaml``),
    ``--samples`` samples of each instrument, seeds 0 .. samples - 1 (``paradigm.sample_generators``),
    drawn as ``lit-genai predict`` draws them (the checkpoint's prompt and length, ``--temperature``).
    Each is scored by ``lit_genai.metrics.pitch.periodicity``: the mean, over its frames louder than
    RMS 0.02, of the best normalised autocorrelation at a lag of a 40-400 Hz period; and its share of
    such loud ("voiced") frames. The same is printed for the validation clips of each instrument
    and for white noise with a note's envelope, so a number can be read against "a note" and "loud
    noise". A note scores near 1 (the bell, whose partials are inharmonic, lower); noise about 0.1-0.3.

    It prints one line per instrument and writes the samples as WAVs and one picture of their
    spectrograms (a row per instrument) to ``--out``.

How to run
    OMP_NUM_THREADS=2 python benchmarks/wavenet_notes_pitch.py runs/audio-wavenet_notes/checkpoints/last.ckpt
    # several temperatures (default: the run's), more samples:
    python benchmarks/wavenet_notes_pitch.py last.ckpt --temperature 1.0 0.9 --samples 4 --out runs/pitch

    The sample rate and the sampling settings (``model.sampling``: ``max_new_tokens``, ``prompt``,
    ``temperature``) are the run's: its ``config.yaml`` beside ``checkpoints/``, as ``lit-genai
    predict`` would use them.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib
import soundfile
import torch
import yaml

from lit_genai import paradigm
from lit_genai.ar.module import NextToken
from lit_genai.data.audio import INSTRUMENTS, ProceduralNotes, mu_law_decode, mu_law_encode
from lit_genai.media import spectrogram
from lit_genai.metrics.pitch import periodicity

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def score(waves: list[torch.Tensor], sample_rate: int) -> tuple[float, float]:
    """(mean periodicity over all voiced frames, share of voiced frames) of some waveforms."""
    scores, voiced, frames = [], 0, 0
    for wave in waves:
        p = periodicity(wave, sample_rate)
        scores.append(p.scores)
        voiced, frames = voiced + p.voiced, frames + p.frames
    joined = torch.cat(scores)
    return (float(joined.mean()) if joined.numel() else math.nan), voiced / max(frames, 1)


def data_waves(sample_rate: int, count: int) -> list[list[torch.Tensor]]:
    """The first ``count`` validation clips of each instrument, as the model saw them (mu-law);
    entry c holds instrument c's."""
    data = ProceduralNotes(
        sample_rate=sample_rate, num_clips=1, val_clips=len(INSTRUMENTS) * count, crop_length=1
    )
    data.setup("validate")
    # validation clip i (clip 1 + i, after the one training clip) is instrument i mod 4
    waves = [mu_law_decode(mu_law_encode(data.clips.clip(1 + i))) for i in range(len(INSTRUMENTS) * count)]
    return [waves[c :: len(INSTRUMENTS)] for c in range(len(INSTRUMENTS))]


def run_config(ckpt: Path) -> dict:
    """The ``config.yaml`` of the run that wrote ``ckpt`` (``<run>/checkpoints/x.ckpt``), or {}."""
    config = ckpt.resolve().parent.parent / "config.yaml"
    return (yaml.safe_load(config.read_text()) or {}) if config.is_file() else {}


def init_args(config: dict, part: str) -> dict:
    return (config.get(part) or {}).get("init_args") or {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "ckpt", type=Path, help="a checkpoint in <run>/checkpoints/, beside <run>/config.yaml"
    )
    parser.add_argument("--samples", type=int, default=2, help="samples per instrument")
    parser.add_argument(
        "--temperature",
        type=float,
        nargs="+",
        default=None,
        help="default: the run's (model.init_args.sampling)",
    )
    parser.add_argument(
        "--sample-rate",
        type=int,
        default=None,
        help="Hz of the data the model learned (default: the run's, data.init_args.sample_rate of the "
        "config.yaml beside checkpoints/)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/wavenet_notes_pitch"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = NextToken.load_from_checkpoint(args.ckpt, map_location="cpu").eval()
    # The sampling settings are not hyperparameters (kept out of checkpoints): take the run's, as predict does
    config = run_config(args.ckpt)
    model.sampling = model.sampling.replace(**(init_args(config, "model").get("sampling") or {}))
    temperatures = args.temperature or [model.sampling.temperature]
    names = model.class_names or list(INSTRUMENTS)
    sr, n = args.sample_rate or init_args(config, "data").get("sample_rate"), args.samples
    if sr is None:
        parser.error(f"no config.yaml beside {args.ckpt.parent} says the sample rate: give --sample-rate")
    args.out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    envelope = torch.exp(-torch.arange(sr, dtype=torch.float64) / (0.3 * sr))
    noise = [0.5 * envelope * torch.randn(sr, generator=g, dtype=torch.float64) for _ in range(n)]
    print(f"white noise with a decaying envelope: periodicity {score(noise, sr)[0]:.3f}")
    real = [score(waves, sr) for waves in data_waves(sr, n)]  # per instrument
    for temperature in temperatures:
        rows = []
        for c, name in enumerate(names):
            ids = model.sample(
                n,
                cond=torch.full((n,), c),
                temperature=temperature,
                generator=paradigm.sample_generators(0, range(n)),
                progress=True,
            )  # (n, T0 + max_new_tokens)
            waves = list(mu_law_decode(ids))
            ours = score(waves, sr)
            print(
                f"T={temperature} {name:9s} samples: periodicity {ours[0]:.3f}, voiced {ours[1]:.2f}  |  "
                f"data: periodicity {real[c][0]:.3f}, voiced {real[c][1]:.2f}"
            )
            for i, wave in enumerate(waves):
                soundfile.write(args.out / f"T{temperature}_{name}_{i}.wav", wave.numpy(), sr)
            rows.append(waves)
        fig, axes = plt.subplots(len(rows), n, figsize=(2.6 * n, 1.6 * len(rows)), squeeze=False)
        # one colour scale for the grid (80 dB below its loudest bin), so a quiet sample looks quiet
        specs = [[spectrogram(wave) for wave in waves] for waves in rows]  # (F, frames) dB each
        top = max(float(db.max()) for dbs in specs for db in dbs)
        for r, (name, waves) in enumerate(zip(names, rows, strict=True)):
            for i, wave in enumerate(waves):
                ax = axes[r][i]
                ax.imshow(
                    specs[r][i].numpy(),
                    origin="lower",
                    aspect="auto",
                    cmap="magma",
                    vmin=top - 80,
                    vmax=top,
                    extent=(0, len(wave) / sr, 0, sr / 2000),
                )
                ax.set_yticks([])
                ax.set_xticks([])
                if i == 0:
                    ax.set_ylabel(name)
        seconds = len(rows[0][0]) / sr
        fig.suptitle(f"WaveNet samples (temperature {temperature}): 0-{seconds:.0f} s, 0-{sr // 2000} kHz")
        fig.tight_layout()
        fig.savefig(args.out / f"T{temperature}_spectrograms.png", dpi=80)
        plt.close(fig)
    print(f"WAVs and spectrograms in {args.out}")


if __name__ == "__main__":
    main()
