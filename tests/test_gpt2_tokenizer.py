"""GPT-2's BPE from a local tokenizer folder (``vocab.json`` + ``merges.txt``, a Hugging Face GPT-2
folder), offline: ``data.tokenizers.gpt2_encoding(folder)``, ``PromptResponse`` and ``CharText`` with
``tokenizer_folder``, and the ``TextDecoder`` a checkpoint keeps. Every folder is a tiny synthetic
one written here: no network."""

import json

import pytest
import torch

from lit_genai.data.decoders import TextDecoder, decoder_config, decoder_from_config
from lit_genai.data.prompt_response import IGNORE_INDEX, PromptResponse
from lit_genai.data.templates import render
from lit_genai.data.text import CharText
from lit_genai.data.tokenizers import gpt2_encoding
from lit_genai.errors import ConfigError

pytest.importorskip("tiktoken")

# Merges in rank order (ids 256, 257, ...); "the then in" -> "the", "Ġthen", "Ġin".
MERGES = ["Ġ t", "h e", "i n", "Ġt he", "Ġ in", "t he", "Ġthe n"]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character (its encoder.py), the alphabet of vocab.json's tokens."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = list(bs), 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def write_tokenizer(folder, merges=MERGES, names=("vocab.json", "merges.txt"), endoftext=True):
    """A GPT-2-style tokenizer folder: the 256 byte tokens, one token per merge, <|endoftext|> last."""
    folder.mkdir(exist_ok=True)
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for merge in merges:
        vocab["".join(merge.split())] = len(vocab)
    if endoftext:
        vocab["<|endoftext|>"] = len(vocab)
    (folder / names[0]).write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / names[1]).write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
    return folder


@pytest.fixture
def gpt2_folder(tmp_path):
    return write_tokenizer(tmp_path / "gpt2")


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------- the encoding


def test_a_local_folder_encodes_with_its_merges_and_round_trips(gpt2_folder):
    encoding = gpt2_encoding(str(gpt2_folder))
    assert encoding.name == "gpt2-local" and encoding.n_vocab == 256 + len(MERGES) + 1
    assert encoding.eot_token == 256 + len(MERGES)
    ids = encoding.encode_ordinary("the then in")
    assert ids == [256 + MERGES.index("t he"), 256 + MERGES.index("Ġthe n"), 256 + MERGES.index("Ġ in")]
    assert encoding.decode(ids) == "the then in"
    for text in ("héllo ☃\n", "  tabs\tand 123 numbers, 'quotes' it's", "<|endoftext|> as text", ""):
        assert encoding.decode(encoding.encode_ordinary(text)) == text
    assert gpt2_encoding(str(gpt2_folder)) is encoding  # cached per folder


def test_openai_file_names_are_accepted_and_an_edited_folder_is_read_again(tmp_path):
    folder = write_tokenizer(tmp_path / "openai", names=("encoder.json", "vocab.bpe"))
    assert gpt2_encoding(str(folder)).encode_ordinary("in") == [256 + MERGES.index("i n")]
    folder = write_tokenizer(tmp_path / "hf")
    first = gpt2_encoding(str(folder))
    write_tokenizer(folder, merges=MERGES[:3])  # another vocabulary in the same folder
    second = gpt2_encoding(str(folder))
    assert second is not first and second.n_vocab == 256 + 3 + 1


def test_missing_or_bad_files_are_one_line_naming_tokenizer_folder(tmp_path, gpt2_folder):
    with pytest.raises(ConfigError, match="tokenizer_folder") as error:
        gpt2_encoding(str(tmp_path / "absent"))
    assert "no such folder" in one_line(error)
    (gpt2_folder / "merges.txt").unlink()
    with pytest.raises(ConfigError, match=r"data\.init_args\.tokenizer_folder") as error:
        gpt2_encoding(str(gpt2_folder))
    assert "merges.txt" in one_line(error) and "vocab.json" in one_line(error)
    bad = write_tokenizer(tmp_path / "bad")
    (bad / "vocab.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"tokenizer_folder.*cannot read") as error:
        gpt2_encoding(str(bad))
    one_line(error)
    other = write_tokenizer(tmp_path / "other")
    (other / "merges.txt").write_text("#version: 0.2\nĠ t\nh e\n", encoding="utf-8")  # fewer merges
    with pytest.raises(ConfigError, match=r"tokenizer_folder.*do not agree") as error:
        gpt2_encoding(str(other))
    one_line(error)
    (other / "merges.txt").write_text("#version: 0.2\nĠ t x\n", encoding="utf-8")  # three tokens
    with pytest.raises(ConfigError, match=r"tokenizer_folder.*line 2 of merges.txt") as error:
        gpt2_encoding(str(other))
    one_line(error)
    (other / "merges.txt").write_text("#version: 0.2\n€ t\n", encoding="utf-8")  # not a byte's character
    with pytest.raises(
        ConfigError, match=r"tokenizer_folder.*'€', not one of GPT-2's byte alphabet"
    ) as error:
        gpt2_encoding(str(other))
    one_line(error)


# ---------------------------------------------------------------------- PromptResponse

RECORDS = [
    {"instruction": "Say the word.", "output": "the then in"},
    {"instruction": "Greet.", "input": "in French", "output": "bonjour ☃"},
    {"prompt": "Echo it", "response": "then the"},
    {"prompt": "Count", "response": "one two"},
]


@pytest.fixture
def sft(tmp_path, gpt2_folder):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS), encoding="utf-8")
    return PromptResponse(
        path=str(path),
        template="alpaca",
        tokenizer="gpt2",
        tokenizer_folder=str(gpt2_folder),
        block_size=256,  # the alpaca preamble is ~100 tokens of this nearly byte-level vocabulary
        batch_size=2,
        val_fraction=0.25,
    )


def test_prompt_response_masks_exactly_the_prompt_with_a_local_gpt2(sft):
    sft.setup("fit")
    assert sft.vocab_size == 256 + len(MERGES) + 1
    responses = {r.get("output", r.get("response")) + sft.template.end for r in RECORDS}
    seen = 0
    for x, y in sft.train_dataloader():
        assert x.shape == y.shape == (x.shape[0], 256) and x.dtype == y.dtype == torch.int64
        assert int(x.max()) >= 256  # merged tokens are in use
        for row in y:
            assert sft.decode(row[row != IGNORE_INDEX])[0] in responses
            seen += 1
    assert seen == len(sft.train_set)
    for messages in sft.conversations["train"]:
        x, y, cut = sft.example(messages)
        ids = sft.encode("".join(s.text for s in render(sft.template, messages)))
        kept = y[: len(ids) - 1] != IGNORE_INDEX
        assert not cut and torch.equal(y[: len(ids) - 1][kept], ids[1:][kept])


def test_the_checkpoints_decoder_decodes_and_encodes_as_the_data(sft, gpt2_folder):
    sft.setup("fit")
    state = sft.state_dict()
    decoder = decoder_from_config(state["decoder"])
    assert decoder == sft.decoder and decoder.folder == str(gpt2_folder.resolve())
    assert decoder_config(decoder)["init_args"]["folder"] == str(gpt2_folder.resolve())
    x, _ = next(iter(sft.train_dataloader()))
    assert decoder(x) == sft.decode(x)
    for text in ("the then in", "héllo ☃\n"):
        assert torch.equal(decoder.encode(text), sft.encode(text))
        assert decoder.encode(text).dtype == torch.int64
    identity = sft.identity()
    assert len(identity["tokenizer_folder"]) == 16 and str(gpt2_folder) not in json.dumps(identity)


def test_decoder_configs_without_a_folder_still_rebuild():
    config = {
        "class_path": "lit_genai.data.decoders.TextDecoder",
        "init_args": {"tokenizer": "char", "vocabulary": ["a", "b"], "vocab_size": 2},
    }
    decoder = decoder_from_config(config)
    assert decoder == TextDecoder("char", ("a", "b"), 2) and decoder.folder is None
    assert decoder_config(decoder) == config  # no folder: the config is as before the field existed
    assert decoder.encode("abba").tolist() == [0, 1, 1, 0] and decoder(torch.tensor([1, 0])) == ["ba"]
    assert TextDecoder("byte", None, 256).encode("é").tolist() == [195, 169]


# ---------------------------------------------------------------------- CharText


def test_char_text_streams_a_local_gpt2(tmp_path, gpt2_folder):
    path = tmp_path / "corpus.txt"
    text = "the then in the inn, then the thin tin. " * 8
    path.write_text(text, encoding="utf-8")
    data = CharText(
        path=str(path),
        tokenizer="gpt2",
        tokenizer_folder=str(gpt2_folder),
        block_size=8,
        batch_size=2,
        steps_per_epoch=2,
    )
    assert data.vocab_size == 256 + len(MERGES) + 1 and data.vocabulary is None
    data.setup("fit")
    assert data.decode(data.tokens[0 : data.num_tokens]) == [text + "<|endoftext|>"]
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (2, 8) and torch.equal(x[:, 1:], y[:, :-1])
    assert decoder_from_config(data.state_dict()["decoder"])(x) == data.decode(x)
    assert len(data.identity()["tokenizer_folder"]) == 16


def test_char_text_needs_endoftext_in_the_folder(tmp_path):
    folder = write_tokenizer(tmp_path / "no_eot", endoftext=False)
    path = tmp_path / "corpus.txt"
    path.write_text("the then in " * 4, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"tokenizer_folder.*<\|endoftext\|>") as error:
        CharText(path=str(path), tokenizer="gpt2", tokenizer_folder=str(folder), block_size=4)
    one_line(error)


def test_a_folder_without_tokenizer_gpt2_is_one_line(tmp_path, gpt2_folder):
    path = tmp_path / "corpus.txt"
    path.write_text("the then in " * 4, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data\.init_args\.tokenizer_folder.*tokenizer gpt2") as error:
        CharText(path=str(path), tokenizer="char", tokenizer_folder=str(gpt2_folder), block_size=4)
    one_line(error)
    jsonl = tmp_path / "sft.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data\.init_args\.tokenizer_folder.*tokenizer gpt2") as error:
        PromptResponse(path=str(jsonl), tokenizer="char", tokenizer_folder=str(gpt2_folder))
    one_line(error)
