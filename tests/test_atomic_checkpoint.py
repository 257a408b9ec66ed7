"""AtomicCheckpointIO: a save killed or failing part-way (a full disk) leaves the previous checkpoint
whole and loadable; a write error is one line naming the file and the cause; the command line uses it
by default, next to the user's plugins."""

from __future__ import annotations

import errno
import io
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY_CLI_TRAINER, quiet_trainer, run_cli
from lightning.pytorch.plugins import AsyncCheckpointIO, MixedPrecision, TorchCheckpointIO

from lit_genai import atomic, checkpoint_io
from lit_genai.checkpoint_io import AtomicCheckpointIO, use_atomic_checkpoints
from lit_genai.errors import LitGenAIError


def _checkpoint(value: float, n: int = 1000) -> dict:
    return {"state_dict": {"w": torch.full((n,), value)}, "global_step": int(value)}


def _partials(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{atomic.PARTIAL_SUFFIX}"))


def _save_slowly(path: Path, writing) -> None:
    """Save a 16 MB checkpoint at ``path``, set ``writing`` once 1 MB of it is on disk, then stall."""
    write, written = checkpoint_io._KeepWriteError.write, [0]

    def slow_write(self, data) -> int:
        n = write(self, data)
        written[0] += n
        if written[0] > 2**20:
            self.file.flush()  # on disk, not in Python's buffer, when the kill comes
            writing.set()
            time.sleep(120)
        return n

    checkpoint_io._KeepWriteError.write = slow_write  # in the forked child only
    AtomicCheckpointIO().save_checkpoint(_checkpoint(2.0, n=4_000_000), path)


def test_a_save_killed_while_writing_leaves_the_previous_checkpoint_whole(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_checkpoint(1.0), path)
    # A real process (forked: no second interpreter to start), SIGKILLed in the middle of its save.
    fork = multiprocessing.get_context("fork")
    writing = fork.Event()
    process = fork.Process(target=_save_slowly, args=(path, writing))
    process.start()
    try:
        assert writing.wait(timeout=120)
        [partial] = _partials(path.parent)  # the half-written file, beside the target
        assert partial.stat().st_size > 2**20
        os.kill(process.pid, signal.SIGKILL)
        process.join(timeout=60)
    finally:
        process.kill()
    assert process.exitcode == -signal.SIGKILL
    assert torch.load(path, weights_only=True)["global_step"] == 1  # the previous checkpoint, whole
    assert _partials(path.parent) == [partial]  # a kill leaves its temporary file...
    AtomicCheckpointIO().save_checkpoint(_checkpoint(3.0), path)
    assert _partials(path.parent) == []  # ...which the next save of the same file removes
    assert torch.load(path, weights_only=True)["global_step"] == 3


class FullDisk(io.FileIO):
    """A file on a disk that fails (``errno``) once ``room`` bytes are written: the bytes that fit
    are written first, as a real full disk does."""

    room, errno = 3000, errno.ENOSPC

    def write(self, data) -> int:
        data = bytes(data)
        left = self.room - self.tell()
        if len(data) > left:
            super().write(data[: max(left, 0)])
            raise OSError(self.errno, os.strerror(self.errno))
        return super().write(data)


def _fail_writes(monkeypatch, code: int, names: str = "") -> None:
    """Make atomic_file's temporary files (of targets starting with ``names``) fail with ``code``."""
    real_open = open

    def fake_open(path, mode="r", *args, **kwargs):
        if "w" in mode and Path(path).name.startswith(f".{names}"):
            file = FullDisk(path, "wb")
            file.errno = code
            return file
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", fake_open, raising=False)  # shadows the builtin in atomic.py


@pytest.mark.parametrize(
    "code, fix",
    [
        (errno.ENOSPC, "free space there or set checkpoint.dirpath to another disk"),
        (errno.EIO, "check that the folder is writable, or set checkpoint.dirpath to another one"),
    ],
)
def test_a_write_error_is_one_line_and_the_previous_checkpoint_stays(code, fix, tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_checkpoint(1.0), path)
    before = path.read_bytes()
    _fail_writes(monkeypatch, code)
    with pytest.raises(LitGenAIError) as error:
        AtomicCheckpointIO().save_checkpoint(_checkpoint(2.0, n=100_000), path)
    cause = f"{os.strerror(code)} ({errno.errorcode[code]})"
    assert (
        str(error.value)
        == f"cannot write checkpoint {path}: {cause}; the previous last.ckpt is unchanged: {fix}"
    )
    assert path.read_bytes() == before and _partials(tmp_path) == []


def test_an_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_checkpoint(1.0), path)
    before = path.read_bytes()

    def interrupted(self, data):
        raise KeyboardInterrupt  # Ctrl-C, or any error, in the middle of torch.save

    monkeypatch.setattr("lit_genai.checkpoint_io._KeepWriteError.write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint(_checkpoint(2.0), path)
    assert path.read_bytes() == before and _partials(tmp_path) == []


def test_trainers_get_it_unless_they_have_their_own_checkpoint_io(tmp_path):
    precision = MixedPrecision("bf16-mixed", "cpu")
    plain = quiet_trainer(tmp_path, plugins=[precision])
    use_atomic_checkpoints(plain)
    assert type(plain.strategy.checkpoint_io) is AtomicCheckpointIO
    assert plain.strategy.precision_plugin is precision  # the user's other plugins stay
    asynchronous = quiet_trainer(tmp_path, plugins=[AsyncCheckpointIO()])
    use_atomic_checkpoints(asynchronous)
    assert type(asynchronous.strategy.checkpoint_io) is AsyncCheckpointIO
    assert issubclass(AtomicCheckpointIO, TorchCheckpointIO)  # loads as Lightning's does


def test_a_full_disk_during_fit_is_one_line_and_last_ckpt_stays(tmp_path, capsys, monkeypatch):
    # The tiny token run of tests/test_cli.py saves at steps 2 and 4; the second last.ckpt meets a
    # full disk. A plugin of the user's (a cluster environment) rides along.
    run = tmp_path / "run"
    trainer = {
        **TINY_CLI_TRAINER,
        "default_root_dir": str(run),
        "plugins": [{"class_path": "lightning.pytorch.plugins.environments.LightningEnvironment"}],
    }
    (tmp_path / "token.yaml").write_text(yaml.safe_dump({"trainer": trainer}))
    args = [
        "fit",
        "--model",
        "toys.TokenToyModel",
        "--data",
        "toys.TokenToyData",
        "--config",
        str(tmp_path / "token.yaml"),
    ]
    real_save = AtomicCheckpointIO.save_checkpoint

    def save_then_fill_the_disk(self, checkpoint, path, storage_options=None):
        if Path(path).name == "last.ckpt" and Path(path).exists():
            _fail_writes(monkeypatch, errno.ENOSPC, names="last.ckpt")
        real_save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", save_then_fill_the_disk)
    assert run_cli(args) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("lit-genai:")]
    last = run / "checkpoints" / "last.ckpt"
    assert errors == [
        f"lit-genai: error: cannot write checkpoint {last}: No space left on device (ENOSPC); the previous "
        "last.ckpt is unchanged: free space there or set checkpoint.dirpath to another disk"
    ], err
    assert "Traceback" not in err
    assert torch.load(last, weights_only=True)["global_step"] == 2
    assert _partials(last.parent) == [] and (run / "config.yaml").is_file() and _partials(run) == []
