"""Data files written whole or not at all by writers on several nodes of one shared folder, whose
process ids repeat (containers): ``lit_genai.atomic`` and the three places that write such
files (the audio waveform cache, Tiny Shakespeare's download, the image-token cache)."""

import io
import os
import stat
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch

import lit_genai.data.text_sources as text_sources
from lit_genai.atomic import atomic_file
from lit_genai.data.audio import AudioFolder
from lit_genai.data.text import CharText
from lit_genai.data.tokens import ImageTokens

PID = 4242  # the process id of every writer here, as containers on different nodes repeat them


@pytest.fixture
def same_pid(monkeypatch):
    monkeypatch.setattr(os, "getpid", lambda: PID)


def _foreign_partial(target):
    """The temporary file another node's writer, with the same pid, has half written beside
    ``target`` under the old ``<name>.<pid>.partial`` naming."""
    partial = target.with_name(f"{target.name}.{PID}.partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"another node, still writing")
    return partial


def test_writers_with_one_pid_get_distinct_temporary_files_beside_the_target(tmp_path, same_pid):
    target = tmp_path / "shared" / "cache.bin"
    with atomic_file(target) as first, atomic_file(target) as second:
        names = {first.name, second.name}
        first.write(b"first")
        second.write(b"second")
        assert not target.exists()  # nothing is visible before a writer finishes
    assert len(names) == 2 and all(os.path.dirname(n) == str(target.parent) for n in names)
    assert target.read_bytes() == b"first"  # the writer that finished last wins, whole
    assert [p.name for p in target.parent.iterdir()] == ["cache.bin"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's owner-only 0600


def test_a_failed_write_leaves_no_partial_file_and_the_old_target(tmp_path):
    target = tmp_path / "cache.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_file(target) as out:
        out.write(b"half")
        raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["cache.bin"]


def test_the_audio_cache_leaves_another_nodes_partial_file_alone(tmp_path, same_pid):
    for i in range(2):
        t = np.arange(4000) / 8000
        soundfile.write(str(tmp_path / f"tone{i}.wav"), 0.5 * np.sin(2 * np.pi * 300 * (i + 1) * t), 8000)
    data = AudioFolder(str(tmp_path), sample_rate=8000, crop_length=400)
    waves, lengths = data._cache_paths()
    partials = [_foreign_partial(waves), _foreign_partial(lengths)]
    data.prepare_data()
    assert all(p.read_bytes() == b"another node, still writing" for p in partials)
    assert np.load(lengths).tolist() == [4000, 4000] and waves.stat().st_size == 2 * 8000  # float16


def test_the_text_download_leaves_another_nodes_partial_file_alone(tmp_path, monkeypatch, same_pid):
    play = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    monkeypatch.setattr(
        text_sources.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(play.encode())
    )
    partial = _foreign_partial(tmp_path / text_sources.TINY_SHAKESPEARE_FILE)
    CharText(name="tiny_shakespeare", root=str(tmp_path), download=True, block_size=8)
    assert partial.read_bytes() == b"another node, still writing"
    assert (tmp_path / text_sources.TINY_SHAKESPEARE_FILE).read_text() == play


def test_the_token_cache_leaves_another_nodes_partial_file_alone(tmp_path, same_pid):
    path = tmp_path / "tokens" / "MNIST5k-0123456789abcdef.pt"
    partial = _foreign_partial(path)
    cached = {"train": (torch.arange(6).view(2, 3), torch.zeros(2).long())}
    ImageTokens._write_cache(SimpleNamespace(cache_path=path), cached)  # only its cache_path is read
    assert partial.read_bytes() == b"another node, still writing"
    assert torch.equal(torch.load(path)["train"][0], cached["train"][0])
