"""Bad input a user gave, through the command line: one line and a non-zero exit, not a traceback.

Unwritable folders are folders under a regular file (``<tmp>/a_file/sub``): these tests run as root
here, and root writes into a chmod-read-only folder, so a read-only folder is only simulated, by
patching ``os.access`` (``test_a_read_only_run_folder_is_one_line``). Also here: ``predict``
deleting an earlier predict's files, a 2-process DDP ``predict`` whose grid and count cover both
ranks, and an audio folder of clips shorter than a crop.
"""

import json
import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from helpers import TINY_CLI_TRAINER, quiet_trainer, run_cli
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.strategies import DDPStrategy
from PIL import Image
from test_cli import DEMO, TINY
from torch import nn

from lit_genai import cli_checks, paradigm
from lit_genai.callbacks.samples import SampleWriter
from lit_genai.data import Digits
from lit_genai.data.audio import AudioFolder

# ---------------------------------------------------------------------- the command line


@pytest.fixture()
def bases(tmp_path):
    """{"demo": the tiny demo (a diffusion model on MNIST5k), "toy": the token toy model of
    tests/toys.py with its trainer}: CLI arguments, run folder ``tmp_path / "run"``; and
    ``tmp_path / "a_file"``, a regular file that no folder can be made under."""
    trainer = {**TINY_CLI_TRAINER, "default_root_dir": str(tmp_path / "run")}
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump({**TINY, "trainer": trainer}))
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump({"trainer": trainer}))
    (tmp_path / "a_file").write_text("a file, not a folder\n")
    return {
        "demo": ["--config", DEMO, "--config", str(tmp_path / "demo.yaml")],
        "toy": ["--model", "toys.TokenToyModel", "--config", str(tmp_path / "toy.yaml")],
    }


BLOCKED = "{t}/a_file/sub"  # under a regular file: unwritable whoever runs the test
UNDER_A_FILE = "cannot be written ({t}/a_file is a file, not a folder)"
RATE = "must be a finite positive number (e.g. 1e-3), given"
TOY = "{toy} --data toys.TokenToyData"
LR = "fit {demo} --model.optimizer.init_args.lr"
PIXELS = "{toy} --data lit_genai.data.ImagePixels --data.images lit_genai.data.MNIST"
TOKENS = (
    "{toy} --data lit_genai.data.ImageTokens --data.images lit_genai.data.MNIST5k --data.tokenizer none.ckpt"
)


def case(name: str, command: str, code: int, says: str, slow: bool = False):
    """A row: ``lit-genai <command>`` exits with ``code`` and its one line contains ``says``. In both,
    {demo} / {toy} stand for the bases' arguments (``bases``) and {t} for the test's tmp_path."""
    return pytest.param(command, code, says, id=name, marks=[pytest.mark.slow] if slow else [])


def at_least(name: str, value: int, owner: str, least: int) -> str:
    return f"data.init_args.{name}={value} ({owner}) must be at least {least}: "


CASES = [
    # folders a run writes, checked right after instantiation (lit_genai/cli_checks.py)
    case("run-folder", f"fit {TOY} --trainer.default_root_dir {BLOCKED}", 1,
         f"the run folder (trainer.default_root_dir) {BLOCKED} {UNDER_A_FILE}: "
         "pass --trainer.default_root_dir <a writable folder>"),
    case("checkpoint-folder", f"fit {TOY} --checkpoint.dirpath {BLOCKED}", 1,
         f"the checkpoint folder (checkpoint.dirpath) {BLOCKED} {UNDER_A_FILE}: pass --checkpoint.dirpath"),
    case("predict-folder", f"predict {TOY} --writer.output_dir {BLOCKED}", 1,
         f"the predict output folder (writer.output_dir) {BLOCKED} {UNDER_A_FILE}: pass --writer.output_dir"),
    case("metric-cache", f"test {{demo}} --evaluation.cache_dir {BLOCKED}", 1,
         f"the metric feature cache (evaluation.cache_dir) {BLOCKED} {UNDER_A_FILE}: "
         "pass --evaluation.cache_dir <a writable folder> (or set LIT_GENAI_CACHE)"),
    case("download-root", "fit {toy} --data lit_genai.data.MNIST --data.download true"
         f" --data.root {BLOCKED}", 1,
         f"the MNIST download folder (data.init_args.root) {BLOCKED} {UNDER_A_FILE}: pass --data.root"),
    case("wrapped-download-root",
         f"fit {PIXELS} --data.images.init_args.download true --data.images.init_args.root {BLOCKED}", 1,
         f"the MNIST download folder (data.init_args.images.init_args.root) {BLOCKED} {UNDER_A_FILE}: "
         "pass --data.images.init_args.root <a writable folder>", slow=True),
    # learning rates: "nan" and "inf" fail the parser (exit 2), numbers the check before instantiation
    case("lr-nan", f"{LR} nan", 2, f"model.optimizer.lr: {RATE} nan"),
    case("lr-inf", f"{LR} inf", 2, f"model.optimizer.lr: {RATE} inf", slow=True),
    case("lr-yaml-inf", f"{LR} .inf", 1, f"model.optimizer.lr: {RATE} inf"),
    case("lr-negative", f"{LR}=-1", 1, f"model.optimizer.lr: {RATE} -1.0"),
    case("lr-zero", "predict {demo} --model.optimizer.lr 0", 1, f"model.optimizer.lr: {RATE} 0.0", slow=True),
    case("module-lr-nan", f"fit {TOY} --model.lr nan", 2, f"model.lr: {RATE} nan"),
    case("module-lr-negative", f"fit {TOY} --model.lr=-0.1", 1, f"model.lr: {RATE} -0.1", slow=True),
    # counts of every data module (lit_genai/data/checks.py)
    case("images-predict-samples-negative", "predict {toy} --data lit_genai.data.MNIST5k"
         " --data.predict_samples=-1", 1,
         at_least("predict_samples", -1, "MNIST5k", 1) + "the number of samples predict draws and writes"),
    case("images-predict-samples-zero", "predict {demo} --data.predict_samples 0", 1,
         at_least("predict_samples", 0, "MNIST5k", 1)),
    case("images-batch-size", "fit {toy} --data lit_genai.data.Digits --data.batch_size 0", 1,
         at_least("batch_size", 0, "Digits", 1)),
    case("images-num-workers", "fit {toy} --data lit_genai.data.MNIST5k --data.num_workers=-1", 1,
         at_least("num_workers", -1, "MNIST5k", 0)),
    case("images-val-size", "fit {toy} --data lit_genai.data.CIFAR10 --data.val_size=-5", 1,
         at_least("val_size", -5, "CIFAR10", 0), slow=True),
    case("images-test-size", "test {toy} --data lit_genai.data.MNIST5k --data.test_size=-1", 1,
         at_least("test_size", -1, "MNIST5k", 0), slow=True),
    case("text", "predict {toy} --data lit_genai.data.CharText --data.name pydoc_topics"
         " --data.predict_samples 0", 1, at_least("predict_samples", 0, "CharText", 1)),
    case("audio-folder", "fit {toy} --data lit_genai.data.audio.AudioFolder --data.root {t}"
         " --data.batch_size 0", 1, at_least("batch_size", 0, "AudioFolder", 1)),
    case("audio-notes", "fit {toy} --data lit_genai.data.audio.ProceduralNotes --data.num_workers=-2", 1,
         at_least("num_workers", -2, "ProceduralNotes", 0)),
    case("image-tokens", f"predict {TOKENS} --data.predict_samples=-3", 1,
         at_least("predict_samples", -3, "ImageTokens", 1)),
    case("pixels", f"fit {PIXELS} --data.batch_size 0", 1, at_least("batch_size", 0, "ImagePixels", 1)),
]  # fmt: skip


def _one_line(capsys) -> str:
    """The command's error: the one ``lit-genai:`` line on stderr, its last line but a pointer to
    ``--help`` (parser errors); no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("Run 'lit-genai ")]
    errors = [line for line in lines if line.startswith("lit-genai:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


@pytest.mark.parametrize("command, code, says", CASES)
def test_bad_input_is_one_line(command, code, says, bases, tmp_path, capsys):
    words = {"demo": " ".join(bases["demo"]), "toy": " ".join(bases["toy"]), "t": tmp_path}
    assert run_cli(command.format(**words).split()) == code
    line = _one_line(capsys)
    assert line.startswith("lit-genai: error: ")
    assert says.format(t=tmp_path) in line, line
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before anything ran


def test_a_read_only_run_folder_is_one_line(bases, tmp_path, capsys, monkeypatch):
    # Root passes chmod's permission bits, so the folder is made read-only in os.access's answer only.
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    access = os.access
    monkeypatch.setattr(cli_checks.os, "access", lambda p, mode: Path(p) != read_only and access(p, mode))
    args = [
        "fit",
        *bases["toy"],
        "--data",
        "toys.TokenToyData",
        "--trainer.default_root_dir",
        str(read_only / "run"),
    ]
    assert run_cli(args) == 1
    assert _one_line(capsys) == (
        f"lit-genai: error: the run folder (trainer.default_root_dir) {read_only / 'run'} cannot be written "
        f"({read_only} is not writable by this user): pass --trainer.default_root_dir <a writable folder>"
    )


# ---------------------------------------------------------------------- predict's files


class NoiseImages(LightningModule):
    """A generative stand-in: sample i is (1, 8, 8) noise in [-1, 1] from the generator seed + i alone,
    so any batching on any number of ranks draws the same pixels."""

    modality = "image"
    ema_target = None
    conditions: tuple[str, ...] = ()
    sampling = paradigm.NoSettings()
    sampling_settings = paradigm.sampling_settings
    predict_step = paradigm.predict_step

    def __init__(self) -> None:
        super().__init__()
        self.num_classes = 0
        self.scale = nn.Parameter(torch.ones(()))  # DDP refuses a module without trainable parameters

    def sample(self, n, *, cond=None, generator=None, **options):
        return paradigm.randn((n, 1, 8, 8), generator, self.device).tanh() * self.scale.detach()


class RecordCount(Callback):
    """Writes each rank's ``SampleWriter.num_samples`` (its count of the samples written) to a file."""

    def __init__(self, out: Path, writer: SampleWriter) -> None:
        self.out, self.writer = out, writer

    def on_predict_end(self, trainer, pl_module) -> None:
        (self.out / f"count{trainer.global_rank}.json").write_text(json.dumps(self.writer.num_samples))


def _predict(folder: Path, samples: int, **trainer_args) -> SampleWriter:
    writer = SampleWriter(output_dir=str(folder))
    trainer = quiet_trainer(folder.parent, [writer, RecordCount(folder.parent, writer)], **trainer_args)
    trainer.predict(
        NoiseImages(), datamodule=Digits(batch_size=2, predict_samples=samples), return_predictions=False
    )
    return writer


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_predict_deletes_an_earlier_predicts_files_and_no_other(tmp_path):
    out = tmp_path / "predictions"
    _predict(out, 6)
    mine = ["notes.txt", "sample_notes.png", "sample_001.png", "grid.png.bak"]  # not the writer's names
    for name in mine:
        (out / name).write_text("the user's\n")
    (out / "sample_00009").mkdir()  # a folder with a sample's name is not the writer's either
    writer = _predict(out, 3)
    assert writer.num_samples == 3
    samples = sorted(p.name for p in out.glob("sample_0????.png"))
    assert samples == ["sample_00000.png", "sample_00001.png", "sample_00002.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*samples, "grid.png", *mine, "sample_00009"])
    assert _pixels(out / "grid.png").shape == (22, 22, 3)  # 3 images of 8 x 8, 2 a row, 2-pixel borders


def test_ddp_predict_grid_and_count_cover_every_rank(tmp_path):
    alone = _predict(tmp_path / "alone" / "predictions", 5)
    assert alone.num_samples == 5
    out = tmp_path / "ddp" / "predictions"
    out.mkdir(parents=True)
    (out / "sample_00007.png").write_bytes(b"from an earlier, larger predict")
    (out / "keep.txt").write_text("the user's\n")
    # Two forked gloo ranks (tests/ddp_evaluation_script.py): ranks 0 and 1 draw samples 0, 2, 4 and
    # 1, 3 (Lightning's UnrepeatedDistributedSampler), in batches of 2; a hung rank raises in a minute.
    ddp = DDPStrategy(start_method="fork", timeout=timedelta(seconds=60))
    _predict(out, 5, accelerator="cpu", devices=2, strategy=ddp)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["grid.png", "keep.txt", *[f"sample_{i:05d}.png" for i in range(5)]]
    assert json.loads((out.parent / "count0.json").read_text()) == 5  # rank 0 counted both ranks'
    grid, expected = _pixels(out / "grid.png"), _pixels(tmp_path / "alone" / "predictions" / "grid.png")
    assert np.array_equal(grid, expected)  # all five samples, in index order, as one process draws them


# ---------------------------------------------------------------------- audio clips shorter than a crop


def _wav(path: Path, wave: np.ndarray, rate: int = 8000) -> None:
    soundfile.write(str(path), wave.astype(np.float32), rate)


def _tone(seconds: float, hz: float = 300.0, rate: int = 8000) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)


def test_short_clips_are_padded_with_one_warning_that_counts_them(tmp_path):
    # Spoken digits: half a second at 8 kHz against a crop of 4,000 samples (4,001 with the target).
    for i in range(3):
        _wav(tmp_path / f"digit{i}.wav", _tone(0.5, 300.0 + 50 * i))
    _wav(tmp_path / "long.wav", _tone(1.0))
    _wav(tmp_path / "silent.wav", np.zeros(8000))  # nothing left once trimmed: left out
    with pytest.warns(UserWarning) as warned:
        data = AudioFolder(str(tmp_path), sample_rate=8000, crop_length=4000, val_fraction=0)
        data.setup("fit")
    assert [str(w.message) for w in warned] == [
        f"data.init_args.root={tmp_path}: 4 of 5 files are shorter than crop_length + 1 = 4001 samples "
        "after trimming silence below -40.0 dB: 3 are zero-padded at their end "
        "(data.init_args.short_files=pad; skip leaves them out), 1 have no sound left and are left out"
    ]
    silent = [f.name for f in data.files].index("silent.wav")
    assert sorted(data.train_set.members.tolist()) == sorted(set(range(5)) - {silent})
    tokens, label = data.train_set[0]
    assert tokens.shape == (4001,) and label == 0
    assert data.write_folders() == []  # the cache is written: nothing left to write
    (tmp_path / "a_file").write_text("a file, not a folder\n")
    other = AudioFolder(
        str(tmp_path), sample_rate=8000, crop_length=4000, cache_dir=str(tmp_path / "a_file" / "c")
    )
    (folder,) = other.write_folders()  # checked by the command line before anything runs
    assert folder.path == tmp_path / "a_file" / "c" and "--data.cache_dir" in folder.fix
    assert cli_checks.unwritable_reason(folder.path) == f"{tmp_path / 'a_file'} is a file, not a folder"


def test_a_folder_with_no_usable_clip_is_one_line(bases, tmp_path, capsys):
    folder = tmp_path / "silence"
    folder.mkdir()
    for i in range(2):
        _wav(folder / f"quiet{i}.wav", np.zeros(4000))
    audio = ["--data", "lit_genai.data.audio.AudioFolder", "--data.root", str(folder)]
    audio += ["--data.sample_rate", "8000", "--data.crop_length", "1000", "--data.val_fraction", "0"]
    assert run_cli(["fit", *bases["toy"], *audio]) == 1
    assert _one_line(capsys) == (
        f"lit-genai: error: data.init_args.root={folder}: no training file has any sound after trimming "
        "silence below -40.0 dB: lower data.init_args.trim_db (null keeps the files whole), or add files"
    )
