"""CharText: character / byte windows of temporary text files and of the standard library's help topics."""

import io
import json
import pickle
import random
import sys
import types
import urllib.error
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from helpers import quiet_trainer
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.callbacks import Callback
from toys import TokenToyModel

import lit_genai.data.text as text_module
import lit_genai.data.text_sources as text_sources
from lit_genai.cli import LitGenAICLI
from lit_genai.data.text import CharText
from lit_genai.data.text_sources import pydoc_topics_text
from lit_genai.errors import ConfigError, DataNotFoundError
from lit_genai.media import write_text

ALPHABET = "abcdefghijklmnopqrst"


def _random_text(n: int, seed: int = 0) -> str:
    """n characters of a 20-letter alphabet: any 17-character window occurs once (20^17 >> n^2)."""
    rng = random.Random(seed)
    return "".join(rng.choice(ALPHABET) for _ in range(n))


@pytest.fixture()
def corpus(tmp_path) -> tuple[Path, str]:
    text = _random_text(2000)
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path, text


def _data(path, **kwargs) -> CharText:
    kwargs = {"block_size": 16, "batch_size": 8, "steps_per_epoch": 3, **kwargs}
    data = CharText(path=str(path), **kwargs)
    data.setup("fit")
    return data


def _positions(data: CharText, text: str, x: torch.Tensor) -> list[int]:
    """Where each row of x (B, T) starts in the text (each window occurs once in a random text)."""
    found = []
    for row in data.decode(x):
        start = text.find(row)
        assert start >= 0 and text.find(row, start + 1) == -1
        found.append(start)
    return found


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message
    return message


# ---------------------------------------------------------------------- batches and splits


def test_batches_are_int64_next_token_pairs_of_the_block_size(corpus):
    path, text = corpus
    data = _data(path)
    assert (data.vocab_size, data.block_size, data.num_classes) == (20, 16, 0)
    assert data.vocabulary == sorted(ALPHABET) and data.num_tokens == 2000
    loader = data.train_dataloader()
    batches = list(loader)
    assert len(batches) == 3  # steps_per_epoch
    for x, y in batches:
        assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one token
        for row_y, start in zip(data.decode(y), _positions(data, text, x), strict=True):
            assert text[start + 1 : start + 17] == row_y
    x, y = next(iter(data.val_dataloader()))
    assert x.shape == (8, 16) and torch.equal(x[:, 1:], y[:, :-1])


def test_train_windows_stay_in_the_first_90_percent_and_validation_tiles_the_rest(corpus):
    path, text = corpus
    data = _data(path, steps_per_epoch=20)
    cut = int(2000 * 0.9)
    starts = [s for x, _ in data.train_dataloader() for s in _positions(data, text, x)]
    assert len(starts) == 160 and all(0 <= s and s + 17 <= cut for s in starts)
    assert len(set(starts)) > 100  # random offsets, not a few repeated ones
    # validation: consecutive windows with stride block_size from the cut, inside the last 10%
    val_starts = [s for x, _ in data.val_dataloader() for s in _positions(data, text, x)]
    assert val_starts == [cut + 16 * j for j in range((2000 - cut - 1) // 16)]
    targets = "".join(data.decode(torch.cat([y for _, y in data.val_dataloader()]).flatten()))
    assert targets == text[cut + 1 : cut + 1 + 16 * len(val_starts)]  # every target once, in order
    assert [s for x, _ in data.test_dataloader() for s in _positions(data, text, x)] == val_starts
    assert [s for x, _ in data.val_dataloader() for s in _positions(data, text, x)] == val_starts


def test_epochs_draw_new_windows_and_the_same_seed_the_same_ones(corpus):
    path, _ = corpus

    def epoch(data, e):
        loader = data.train_dataloader()
        loader.sampler.set_epoch(e)  # what Lightning calls at the start of each epoch
        return torch.cat([x for x, _ in loader])

    first = _data(path)
    assert not torch.equal(epoch(first, 0), epoch(first, 1))
    assert torch.equal(epoch(first, 1), epoch(_data(path), 1))
    assert not torch.equal(epoch(first, 0), epoch(_data(path, seed=1), 0))
    # shared out as Lightning does under DDP: the two ranks draw disjoint parts of the epoch's windows
    loader = first.train_dataloader()
    ranks = [
        [int(i) for i in DistributedSamplerWrapper(loader.sampler, num_replicas=2, rank=r, shuffle=False)]
        for r in (0, 1)
    ]
    assert sorted(ranks[0] + ranks[1]) == list(range(24)) and not set(ranks[0]) & set(ranks[1])


def test_lightning_sets_the_epoch_of_the_windows(corpus):
    path, _ = corpus
    data = CharText(path=str(path), block_size=16, batch_size=4, steps_per_epoch=2)
    firsts = {}

    class FirstBatch(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 0:
                firsts[trainer.current_epoch] = batch[0].clone()

    model = TokenToyModel(vocab_size=data.vocab_size, block_size=data.block_size)
    trainer = quiet_trainer(path.parent, [FirstBatch()], max_epochs=2, limit_val_batches=1)
    trainer.fit(model, datamodule=data)
    data_again = CharText(path=str(path), block_size=16, batch_size=4, steps_per_epoch=2)
    data_again.setup("fit")
    loader = data_again.train_dataloader()
    for e in (0, 1):
        loader.sampler.set_epoch(e)
        assert torch.equal(firsts[e], next(iter(loader))[0])
    assert not torch.equal(firsts[0], firsts[1])


def test_predict_yields_sample_indices(corpus):
    data = _data(corpus[0], predict_samples=10, batch_size=4)
    assert [b.tolist() for b in data.predict_dataloader()] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


# ---------------------------------------------------------------------- tokenizers


def test_char_vocabulary_encode_and_decode(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("hello world, hello moon\r\n" * 3, encoding="utf-8")
    data = CharText(path=str(path), block_size=4)
    assert data.vocabulary == ["\n", "\r", " ", ",", "d", "e", "h", "l", "m", "n", "o", "r", "w"]
    ids = data.encode("hello\r\n")
    assert ids.dtype == torch.int64 and ids.tolist() == [6, 5, 7, 7, 10, 1, 0]
    assert data.decode(ids) == ["hello\r\n"]
    assert data.decode(torch.stack([ids, ids.flip(0)])) == ["hello\r\n", "\n\rolleh"]


def test_byte_tokenizer_round_trips_non_ascii(tmp_path):
    text = "Grüße, 日本語 ✓ — naïve\n" * 4
    path = tmp_path / "u.txt"
    path.write_text(text, encoding="utf-8")
    data = CharText(path=str(path), tokenizer="byte", block_size=8)
    assert (data.vocab_size, data.vocabulary, data.num_tokens) == (256, None, len(text.encode()))
    ids = data.encode("日本 ✓")
    assert ids.tolist() == list("日本 ✓".encode()) and data.decode(ids) == ["日本 ✓"]
    assert data.decode(ids[:2]) == ["\ufffd"]  # a cut multi-byte character is replaced, not an error
    data.setup("fit")
    assert data.decode(data.tokens) == [text]


def test_pydoc_topics_is_offline_text_with_its_own_characters():
    text = pydoc_topics_text()
    from pydoc_data.topics import topics

    assert text.startswith(topics[sorted(topics)[0]]) and len(text) > 100_000
    data = CharText(name="pydoc_topics", block_size=32, batch_size=4)
    assert data.vocabulary == sorted(set(text)) and data.num_tokens == len(text)
    data.setup("fit")
    assert data.decode(data.tokens) == [text]
    assert len(data.val_set) == (len(text) - int(len(text) * 0.9) - 1) // 32


def test_decoded_samples_take_the_text_media_route(tmp_path, corpus):
    data = _data(corpus[0])
    x, _ = next(iter(data.val_dataloader()))
    texts = data.decode(x)
    paths = write_text(tmp_path / "out", [f"sample_{i:05d}" for i in range(len(texts))], texts)
    assert [p.read_text(encoding="utf-8") for p in paths] == texts and len(texts) == 8


# ---------------------------------------------------------------------- labels, state, identity


def test_labels_are_the_files_of_a_folder_and_windows_stay_inside_one(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    texts = {name: _random_text(600, seed) for seed, name in enumerate(["b.txt", "a.txt", "c.txt"])}
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "notes.md").write_text("ignored")
    data = _data(folder, labels=True)
    assert data.num_classes == 3 and [Path(f).name for f in data.files] == ["a.txt", "b.txt", "c.txt"]
    ordered = [texts[n] for n in ("a.txt", "b.txt", "c.txt")]
    cut = int(600 * 0.9)
    seen = set()
    for loader, inside in ((data.train_dataloader(), lambda s: s + 17 <= cut), (data.val_dataloader(), None)):
        for x, _, c in loader:
            assert c.dtype == torch.int64 and c.shape == (x.shape[0],)
            for row, label in zip(data.decode(x), c.tolist(), strict=True):
                start = ordered[label].find(row)  # the window lies inside its label's file
                assert start >= 0 and (inside(start) if inside else start >= cut)
                seen.add(label)
    assert seen == {0, 1, 2}
    unlabelled = _data(folder)
    assert unlabelled.num_classes == 0 and len(next(iter(unlabelled.train_dataloader()))) == 2


def test_state_dict_carries_the_vocabulary_through_a_safe_checkpoint(tmp_path):
    wide, narrow = tmp_path / "wide.txt", tmp_path / "narrow.txt"
    wide.write_text("the quick brown fox jumps over the lazy dog\n" * 10, encoding="utf-8")
    narrow.write_text("the lazy dog sleeps\n" * 10, encoding="utf-8")
    trained = CharText(path=str(wide), block_size=8)
    torch.save({"CharText": trained.state_dict()}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["CharText"]
    data = _data(narrow, block_size=8)
    assert data.vocabulary != trained.vocabulary
    data.load_state_dict(state)
    assert data.vocabulary == trained.vocabulary and data.vocab_size == trained.vocab_size == 28
    assert torch.equal(data.encode("lazy dog"), trained.encode("lazy dog"))
    assert data.decode(data.tokens) == [narrow.read_text()]  # the sets were re-encoded with it
    x, y = next(iter(data.train_dataloader()))
    assert all(row in narrow.read_text() for row in data.decode(x))
    # a vocabulary without the data's characters cannot encode it: one line
    poor = CharText(path=str(narrow), block_size=8)
    poor.setup("fit")
    with pytest.raises(ConfigError) as err:
        wider = CharText(path=str(wide), block_size=8)
        wider.setup("fit")
        wider.load_state_dict(poor.state_dict())
    assert "lacks the character" in _one_line(err)
    with pytest.raises(ConfigError) as err:
        data.load_state_dict({"tokenizer": "byte", "vocabulary": None})
    assert "tokenizer" in _one_line(err)


def test_identity_follows_the_text_and_split_not_the_batching(corpus, tmp_path):
    path, text = corpus
    base = CharText(path=str(path), block_size=16)
    assert CharText(path=str(path), block_size=16, batch_size=3, num_workers=2).identity() == base.identity()
    assert CharText(path=str(path), block_size=8).identity() != base.identity()
    assert base.identity()["path"] == str(path.resolve())
    path.write_text(text[::-1], encoding="utf-8")
    assert CharText(path=str(path), block_size=16).identity() != base.identity()


# ---------------------------------------------------------------------- Tiny Shakespeare, offline


def test_tiny_shakespeare_reads_root_or_path_and_downloads_when_asked(tmp_path, monkeypatch):
    play = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 5
    local = tmp_path / "copy.txt"
    local.write_text(play)
    assert CharText(name="tiny_shakespeare", path=str(local), block_size=8).num_tokens == len(play)
    with pytest.raises(DataNotFoundError) as err:
        CharText(name="tiny_shakespeare", root=str(tmp_path / "none"), block_size=8)
    message = _one_line(err)
    assert "--data.download true" in message and "--data.path" in message
    fetched = []

    def fake_urlopen(url, timeout):
        fetched.append(url)
        return io.BytesIO(play.encode())

    monkeypatch.setattr(text_sources.urllib.request, "urlopen", fake_urlopen)
    root = tmp_path / "data"
    data = CharText(name="tiny_shakespeare", root=str(root), download=True, block_size=8)
    assert fetched == [text_sources.TINY_SHAKESPEARE_URL] and data.num_tokens == len(play)
    assert (root / "tinyshakespeare.txt").read_text() == play and not list(root.glob("*.partial"))
    data.prepare_data()  # already there: no second download
    assert len(fetched) == 1

    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(text_sources.urllib.request, "urlopen", offline)
    with pytest.raises(DataNotFoundError) as err:
        CharText(name="tiny_shakespeare", root=str(tmp_path / "other"), download=True, block_size=8)
    assert "--data.path" in _one_line(err) and not list((tmp_path / "other").glob("*"))


# ---------------------------------------------------------------------- bad input: one line each


@pytest.mark.parametrize(
    "content, kwargs, error, words",
    [
        (b"", {}, ConfigError, "is empty"),
        (b"abcdefgh", {}, ConfigError, "fewer than data.init_args.block_size + 1 = 17"),
        (b"abc" * 20 + b"\xff\xfe" + b"abc" * 20, {}, ConfigError, "byte offset 60"),
        (b"abc" * 20, {"labels": True}, ConfigError, "labels=true needs a folder"),
        (b"abc" * 20, {"val_fraction": 1.0}, ConfigError, "val_fraction=1.0"),
        (b"abc" * 6, {}, ConfigError, "training part (16 of 18 tokens)"),
    ],
)
def test_bad_files_and_settings_are_one_line(tmp_path, content, kwargs, error, words):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(error) as err:
        CharText(path=str(path), block_size=16, **kwargs).setup("fit")
    message = _one_line(err)
    assert words in message
    if b"\xff" in content:
        assert str(path) in message and "--data.tokenizer byte" in message
        assert CharText(path=str(path), tokenizer="byte", block_size=16).num_tokens == len(content)


def test_missing_sources_and_unknown_prompt_characters_are_one_line(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        CharText(path=str(tmp_path / "missing.txt"))
    assert "missing.txt" in _one_line(err)
    with pytest.raises(DataNotFoundError) as err:
        CharText(path=str(tmp_path))  # a folder without .txt files
    assert "No .txt files" in _one_line(err)
    with pytest.raises(ConfigError) as err:
        CharText()
    assert "data.init_args.path" in _one_line(err)
    with pytest.raises(ConfigError) as err:
        CharText(name="pydoc_topics", path=str(tmp_path))
    assert "remove data.init_args.path" in _one_line(err)
    data = CharText(name="pydoc_topics", block_size=32)
    with pytest.raises(ConfigError) as err:
        data.encode("print('日本')")
    assert "'日'" in _one_line(err) and "'本'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        data.decode(torch.tensor([[0, data.vocab_size]]))
    assert str(data.vocab_size) in _one_line(err)


# ---------------------------------------------------------------------- command line


def test_the_cli_links_vocab_and_block_size_into_a_token_model(tmp_path):
    data = {
        "class_path": "lit_genai.data.text.CharText",
        "init_args": {"name": "pydoc_topics", "block_size": 32},
    }
    args = ["--model", "toys.TokenToyModel", "--data", json.dumps(data), "--trainer.logger", "false"]
    with mock.patch.object(sys, "argv", ["lit-genai"]):
        cli = LitGenAICLI(args=[*args, "--trainer.default_root_dir", str(tmp_path)], run=False)
    expected = len(set(pydoc_topics_text()))
    assert cli.datamodule.vocab_size == expected == cli.model.hparams["vocab_size"] == cli.model.vocab_size
    assert cli.model.hparams["block_size"] == 32 and cli.model.hparams["num_classes"] == 0


# ---------------------------------------------------------------------- gpt2: a fake encoding, no tiktoken


class FakeEncoding:
    """A byte-level stand-in for ``tiktoken.get_encoding("gpt2")``: ids are bytes + 65000 (above the
    int16 range, inside uint16), ``eot_token`` 65256; counts its ``encode_ordinary`` calls."""

    offset, eot_token, n_vocab = 65000, 65256, 65257

    def __init__(self) -> None:
        self.calls = 0

    def encode_ordinary(self, text: str) -> list[int]:
        self.calls += 1
        return [b + self.offset for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        eot = "<|endoftext|>"
        return "".join(eot if i == self.eot_token else chr(i - self.offset) for i in ids)


@pytest.fixture()
def fake_gpt2(monkeypatch) -> FakeEncoding:
    encoding = FakeEncoding()
    monkeypatch.setattr(text_module, "gpt2_encoding", lambda: encoding)
    return encoding


def test_gpt2_tokens_are_cached_once_as_uint16_and_windows_index_the_map(tmp_path, fake_gpt2):
    folder = tmp_path / "docs"
    folder.mkdir()
    texts = [_random_text(400, seed) for seed in range(2)]
    for name, text in zip(("a.txt", "b.txt"), texts, strict=True):
        (folder / name).write_text(text, encoding="utf-8")
    data = CharText(path=str(folder), tokenizer="gpt2", block_size=16, batch_size=8, steps_per_epoch=3)
    assert (data.vocab_size, data.vocabulary, data.num_classes) == (65257, None, 0)
    assert data.num_tokens is None and fake_gpt2.calls == 0  # no file read before prepare_data/setup
    data.prepare_data()
    (cache,) = (folder / ".lit_genai_tokens").glob("*")
    assert cache.suffix == ".bin" and fake_gpt2.calls == 2  # one encode per document
    stored = np.fromfile(cache, dtype=np.uint16)
    expected = [b + 65000 for b in texts[0].encode()] + [65256] + [b + 65000 for b in texts[1].encode()]
    assert stored.tolist() == [*expected, 65256]  # <|endoftext|> after each document, as nanoGPT
    data.setup("fit")
    assert fake_gpt2.calls == 2 and data.num_tokens == 802 and data.tokens[0:802].tolist() == stored.tolist()
    stream = "<|endoftext|>".join(texts) + "<|endoftext|>"
    cut = int(802 * 0.9)
    for x, y in data.train_dataloader():
        assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1]) and int(x.min()) >= 65000
        for row_x in x.tolist():
            start = [i for i in range(cut - 16) if stored[i : i + 16].tolist() == row_x]
            assert len(start) == 1
    val = torch.cat([x for x, _ in data.val_dataloader()])
    assert len(data.val_set) == (802 - cut - 1) // 16 and val[0].tolist() == stored[cut : cut + 16].tolist()
    assert data.decode(torch.from_numpy(stored.astype(np.int64))) == [stream]
    # worker processes get the file's path, not a copy of the map
    assert data.tokens._map is not None and pickle.loads(pickle.dumps(data.tokens))._map is None
    copied = pickle.loads(pickle.dumps(data.val_set))
    assert all(torch.equal(u, v) for u, v in zip(copied[1], data.val_set[1], strict=True))
    # a second data module over the same files reuses the file: no encoding, the same windows
    again = CharText(path=str(folder), tokenizer="gpt2", block_size=16, batch_size=8, steps_per_epoch=3)
    again.setup("fit")
    assert fake_gpt2.calls == 2 and list((folder / ".lit_genai_tokens").glob("*")) == [cache]
    assert torch.equal(next(iter(again.train_dataloader()))[0], next(iter(data.train_dataloader()))[0])
    # another file's size or time is another token file
    (folder / "a.txt").write_text(texts[0][:-1], encoding="utf-8")
    CharText(path=str(folder), tokenizer="gpt2", block_size=16).setup("fit")
    assert fake_gpt2.calls == 4 and len(list((folder / ".lit_genai_tokens").glob("*.bin"))) == 2


def test_gpt2_encode_and_decode_go_through_the_encoding(tmp_path, fake_gpt2):
    path = tmp_path / "t.txt"
    path.write_text(_random_text(300), encoding="utf-8")
    data = CharText(path=str(path), tokenizer="gpt2", block_size=8)
    ids = data.encode("héllo")
    assert ids.dtype == torch.int64 and ids.tolist() == [b + 65000 for b in "héllo".encode()]
    assert fake_gpt2.calls == 1
    assert data.decode(torch.tensor([[65000 + 104, 65000 + 105, 65256]])) == ["hi<|endoftext|>"]
    with pytest.raises(ConfigError) as err:
        data.decode(torch.tensor([65257]))
    assert "65257" in _one_line(err)
    decoder = {
        "class_path": "lit_genai.data.decoders.TextDecoder",
        "init_args": data.state_dict()["decoder"]["init_args"],
    }
    assert data.state_dict() == {"tokenizer": "gpt2", "vocabulary": None, "decoder": decoder}
    assert decoder["init_args"] == {"tokenizer": "gpt2", "vocabulary": None, "vocab_size": 65257}
    with pytest.raises(ConfigError) as err:
        CharText(path=str(tmp_path), tokenizer="gpt2", labels=True)
    assert "labels false" in _one_line(err)


def test_gpt2_without_tiktoken_or_offline_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "t.txt"
    path.write_text(_random_text(300), encoding="utf-8")
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import tiktoken raises ImportError
    with pytest.raises(ConfigError) as err:
        CharText(path=str(path), tokenizer="gpt2", block_size=8)
    message = _one_line(err)
    assert "pip install tiktoken" in message and "internet" in message and "TIKTOKEN_CACHE_DIR" in message

    def offline(name):
        raise OSError("Max retries exceeded\nwith url: https://openaipublic.blob.core.windows.net/...")

    monkeypatch.setitem(sys.modules, "tiktoken", types.SimpleNamespace(get_encoding=offline))
    with pytest.raises(DataNotFoundError) as err:
        CharText(path=str(path), tokenizer="gpt2", block_size=8)
    message = _one_line(err)
    assert "Max retries exceeded" in message and "TIKTOKEN_CACHE_DIR" in message


def test_help_topics_as_labels_are_one_document_per_topic():
    from pydoc_data.topics import topics

    data = CharText(name="pydoc_topics", labels=True, block_size=16, batch_size=8, steps_per_epoch=4)
    assert data.class_names == sorted(topics) and data.num_classes == len(topics)
    data.setup("fit")
    x, y, c = next(iter(data.train_dataloader()))
    for row, label in zip(x, c, strict=True):  # each window lies inside its topic's text
        assert data.decode(row[None])[0] in topics[data.class_names[label]]
    with pytest.warns(UserWarning, match="help topics have training parts shorter than"):
        long = CharText(name="pydoc_topics", labels=True, block_size=300)
    assert 0 < long.num_classes < len(topics) and len(long.class_names) == long.num_classes
    assert all(int(len(topics[n]) * 0.9) >= 301 for n in long.class_names)


def test_tiny_shakespeare_has_no_labels_and_says_how_to_get_them(tmp_path):
    (tmp_path / "tinyshakespeare.txt").write_text("ROMEO:\nhello there\n" * 20)
    with pytest.raises(ConfigError, match="plays run together without titles") as err:
        CharText(name="tiny_shakespeare", root=str(tmp_path), labels=True)
    assert "one .txt per play" in _one_line(err)
