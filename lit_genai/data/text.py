"""Character-, byte- and GPT-2-token text for next-token models (karpathy/nanoGPT, data/shakespeare_char,
data/openwebtext).

``CharText`` reads a corpus — a text file, a folder of ``.txt`` files (one document each), Tiny
Shakespeare (karpathy/char-rnn) or the Python standard library's help topics
(``pydoc_data.topics``, always offline) — in ``__init__``, so that ``vocab_size``, ``block_size``,
``num_classes`` and ``vocabulary`` exist before any batch is drawn and the command line links them
into the model (docs/architecture.md, "Data and model").

Tokenizers:

- ``"char"``: the sorted set of the characters of the whole corpus (all documents, all splits), as
  nanoGPT's ``data/shakespeare_char/prepare.py``: Tiny Shakespeare gives 65 symbols.
  ``vocabulary`` is that list of characters; it also travels in the data module's ``state_dict()``,
  so a checkpoint can turn token ids back into text without the corpus.
- ``"byte"``: the UTF-8 bytes of the files, 256 ids; any file can be read. ``vocabulary`` is None:
  ids are bytes by definition, and per-id symbols would break multi-byte characters; ``decode``
  joins a row's bytes and decodes them as UTF-8 with ``errors="replace"``.
- ``"gpt2"``: GPT-2's byte-pair encoding through ``tiktoken`` (an optional package; its first use
  downloads the BPE files once, then caches them under ``$TIKTOKEN_CACHE_DIR`` or a temporary folder),
  50257 ids, ``vocabulary`` None; ``encode`` is ``encode_ordinary`` and ``decode`` the encoding's.
  As nanoGPT's ``data/openwebtext/prepare.py``, every document is ``encode_ordinary(text)`` followed
  by ``<|endoftext|>`` (``eot_token``, 50256), all documents form one stream, and the stream is
  written once as a flat uint16 file, ``<folder>/.lit_genai_tokens/<digest>.bin`` next to the data
  (``root``, or the folder of / named by ``path``; the digest covers the files' names, sizes and
  modification times and the tokenizer; written to a temporary name, then renamed). Later runs map
  it with ``np.memmap(mode="r")`` and each window is converted to int64 on its own, so the corpus
  never has to fit in memory. The file is written by ``prepare_data`` or ``setup`` (the files are
  not read in ``__init__``; ``num_tokens`` is None until then). Splits are by position over the
  whole stream (nanoGPT's ``data[:int(n * 0.9)]``), so windows may span ``<|endoftext|>`` between
  documents; ``labels`` is not available.

Splits (by position, as nanoGPT's ``train_data = data[:int(n * 0.9)]``): the first
``1 - val_fraction`` of each document's tokens trains, the rest validates; ``test`` is the
validation windows. Windows never cross a document boundary (char and byte tokenizers).

- Training: ``steps_per_epoch * batch_size`` windows of ``block_size + 1`` tokens per epoch, at
  random offsets inside the training parts (uniform over every valid start, as nanoGPT's
  ``get_batch``). Window ``i`` of epoch ``e`` starts at an offset drawn from a NumPy generator
  seeded by ``(seed, e * n + i)`` (n windows per epoch): a sampler yields those indices and
  Lightning calls its ``set_epoch`` every epoch (under DDP through ``DistributedSamplerWrapper``,
  which also shares the indices out, so ranks draw distinct windows and the epoch's windows are
  split across them). Epochs differ, the same seed repeats a run, worker processes need no shared
  state, and a run resumed at an epoch boundary draws what an uninterrupted one would.
- Validation: the validation part of each document cut into consecutive windows of
  ``block_size + 1`` tokens with stride ``block_size`` (window j starts at ``j * block_size``), so
  every validation token but the first is predicted exactly once; deterministic.

Batches (docs/architecture.md, "Batches"): ``(x, y)`` int64 (B, T) with T = block_size and
y = x shifted by one token; with ``labels`` ``(x, y, c)``, c (B,) int64 the index of the window's
file (sorted names). ``predict_dataloader`` yields (B,) int64 sample indices as the image modules do;
``decode`` gives a list of strings: the text media route (``lit_genai.media``).

Shapes: B batch, T block_size tokens, N tokens of a corpus.
"""

from __future__ import annotations

import hashlib
import inspect
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import Dataset

from lit_genai.atomic import atomic_file
from lit_genai.data.loaders import SplitLoaders
from lit_genai.errors import ConfigError, DataNotFoundError

TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINY_SHAKESPEARE_FILE = "tinyshakespeare.txt"
_KEY = "data.init_args"


def pydoc_topics() -> dict[str, str]:
    """The standard library's help topics (``pydoc_data.topics.topics``) in sorted key order: topic
    name (``"for"``, ``"string-methods"``, ...) -> its text; about 80 topics, offline on any Python."""
    from pydoc_data.topics import topics

    return {key: topics[key] for key in sorted(topics)}


def pydoc_topics_text() -> str:
    """The help topics joined in sorted key order with one newline between topics: about 465k
    characters."""
    return "\n".join(pydoc_topics().values())


# ---------------------------------------------------------------------- datasets


class _RandomWindows(Dataset):
    """Window k starts at a uniform valid offset drawn from ``default_rng((seed, k))``.

    Args:
        tokens: The corpus, (N,) int64 (or a ``_TokenFile``), documents back to back.
        starts: (S,) every valid start of a window of ``block_size + 1`` tokens, in order: an int64
            tensor, or a ``range`` (never materialised, for corpora larger than memory).
        labels: (S,) int64 the document of each start, or None.
        block_size: Tokens of x (and of y).
        seed: First entropy word of every window's generator.
        length: Windows per epoch (``len`` of the set; indices beyond it belong to later epochs).
    """

    def __init__(
        self,
        tokens: Any,
        starts: Sequence[int],
        labels: Optional[Tensor],
        block_size: int,
        seed: int,
        length: int,
    ) -> None:
        self.tokens, self.starts, self.labels = tokens, starts, labels
        self.block_size, self.seed, self.length = block_size, seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> tuple[Tensor, ...]:
        j = int(np.random.default_rng((self.seed, int(k))).integers(len(self.starts)))
        return _window(self.tokens, self.starts, self.labels, j, self.block_size)


class _FixedWindows(Dataset):
    """Window j is ``tokens[starts[j] : starts[j] + block_size + 1]`` as (x, y[, c])."""

    def __init__(self, tokens: Any, starts: Sequence[int], labels: Optional[Tensor], block_size: int) -> None:
        self.tokens, self.starts, self.labels, self.block_size = tokens, starts, labels, block_size

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, j: int) -> tuple[Tensor, ...]:
        return _window(self.tokens, self.starts, self.labels, j, self.block_size)


class _TokenFile:
    """A flat uint16 token file, mapped with ``np.memmap(mode="r")`` on first use (in each worker process:
    the map itself is not pickled); slices are int64 tensors, so only a window is ever converted."""

    def __init__(self, path: Path) -> None:
        self.path, self._map = path, None

    def __len__(self) -> int:
        return self.path.stat().st_size // 2

    def __getitem__(self, index: slice) -> Tensor:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint16, mode="r")
        return torch.from_numpy(self._map[index].astype(np.int64))  # (n,)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_map": None}


def _window(tokens: Any, starts: Sequence[int], labels: Optional[Tensor], j: int, block_size: int):
    start = int(starts[j])
    chunk = tokens[start : start + block_size + 1]  # (T + 1,)
    x, y = chunk[:-1], chunk[1:]  # (T,), (T,): y is x shifted by one token
    return (x, y) if labels is None else (x, y, labels[j])


# ---------------------------------------------------------------------- the data module


class CharText(SplitLoaders, L.LightningDataModule):
    """Character-, byte- or GPT-2-token text as next-token pairs: nanoGPT's shakespeare_char (and,
    with ``tokenizer: gpt2``, openwebtext-style memory-mapped) data.

    Args:
        path: A UTF-8 text file, or a folder whose ``*.txt`` files are the documents (sorted by
            name). With ``name: tiny_shakespeare``: a local copy of that file.
        name: A named corpus: ``"tiny_shakespeare"`` (``root``/tinyshakespeare.txt, or ``path``;
            fetched from karpathy/char-rnn with ``download: true``) or ``"pydoc_topics"`` (the
            standard library's help topics, offline). Give ``path`` or ``name``.
        root: Folder holding (or receiving) the named corpus' file.
        download: Fetch Tiny Shakespeare into ``root`` if missing (needs internet). It happens in
            ``__init__``, because the character vocabulary is needed before the model is built;
            ``prepare_data`` repeats the (then idle) check.
        tokenizer: ``"char"`` (the corpus' sorted characters), ``"byte"`` (256 UTF-8 byte ids) or
            ``"gpt2"`` (GPT-2 BPE, 50257 ids, through ``pip install tiktoken``; its first use needs
            internet once, or ``TIKTOKEN_CACHE_DIR`` set to a folder holding the BPE files). The
            gpt2 tokens are cached as a uint16 memory-mapped file in ``.lit_genai_tokens/`` next
            to the data.
        block_size: Tokens per training sequence (T); windows hold T + 1 tokens.
        batch_size: Windows per batch (also sample indices per predict batch).
        val_fraction: Share of each document's tokens, at its end, kept for validation (0 = none);
            with gpt2, the share at the end of the whole stream.
        steps_per_epoch: Training batches per epoch; an epoch draws ``steps_per_epoch * batch_size``
            random windows (shared out across DDP ranks).
        labels: Label each window with its document: the index of its file (a folder of files),
            or of its help topic (``name: pydoc_topics``, one document per topic; topics shorter
            than ``block_size + 1`` are left out). Batches ``(x, y, c)``, ``num_classes`` the number
            of documents and ``class_names`` their names (file stems or topics), which a model can
            be asked for by name at sampling time. False: ``(x, y)`` and ``num_classes`` 0.
        seed: Seed of the training windows' offsets.
        num_workers: DataLoader worker processes; 0 loads in the main process.
        predict_samples: Number of samples ``trainer.predict`` asks the model for.
    """

    epoch_indices = True  # training window e * n + i is drawn from a generator seeded by that index

    def __init__(
        self,
        path: Optional[str] = None,
        name: Optional[Literal["tiny_shakespeare", "pydoc_topics"]] = None,
        root: str = "data",
        download: bool = False,
        tokenizer: Literal["char", "byte", "gpt2"] = "char",
        block_size: int = 256,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        steps_per_epoch: int = 500,
        labels: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        predict_samples: int = 8,
    ) -> None:
        super().__init__()
        if block_size < 1 or batch_size < 1 or steps_per_epoch < 1:
            raise ConfigError(
                f"{_KEY}: block_size={block_size}, batch_size={batch_size} and "
                f"steps_per_epoch={steps_per_epoch} must all be at least 1"
            )
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"{_KEY}.val_fraction={val_fraction} must be in [0, 1)")
        self.path, self.name, self.root, self.download = path, name, root, download
        self.tokenizer, self.block_size, self.batch_size = tokenizer, block_size, batch_size
        self.val_fraction, self.steps_per_epoch, self.labels = val_fraction, steps_per_epoch, labels
        self.seed, self.num_workers, self.predict_samples = seed, num_workers, predict_samples

        self._encoding = _gpt2_encoding() if tokenizer == "gpt2" else None
        if labels and tokenizer == "gpt2":
            raise ConfigError(
                f"{_KEY}.labels=true labels windows by file, but {_KEY}.tokenizer=gpt2 joins the documents "
                "into one stream: set labels false, or use tokenizer char or byte"
            )
        self.files, raw = self._read_corpus()  # document names, their bytes (or text); None for gpt2 files
        if labels and name == "tiny_shakespeare":
            raise ConfigError(
                f"{_KEY}.labels=true: Tiny Shakespeare is one text whose plays run together without "
                f"titles, so it has no labels; split it into one .txt per play in a folder and pass "
                f"that as {_KEY}.path, or set labels false"
            )
        if labels and name is None and (path is None or not Path(path).is_dir()):
            raise ConfigError(
                f"{_KEY}.labels=true needs a folder of .txt files (one label per file) as "
                f"{_KEY}.path, or name pydoc_topics; {self._source()} is one document: set labels false"
            )
        if labels and name == "pydoc_topics":
            raw = self._drop_short_topics(raw, block_size)
        self.documents: Optional[list[Any]] = raw  # str per document (char, gpt2) or bytes (byte)
        if self._encoding is not None:
            self.vocabulary = None
            self.vocab_size = int(self._encoding.n_vocab)
            if self.vocab_size > 2**16:
                raise ConfigError(f"{_KEY}.tokenizer=gpt2: {self.vocab_size} ids do not fit the uint16 cache")
        elif tokenizer == "char":
            self.vocabulary: Optional[list[str]] = vocabulary_of(raw)
            self.vocab_size = len(self.vocabulary)
        else:
            self.vocabulary = None
            self.vocab_size = 256
        self._index = self._lookup()
        self.num_classes = len(self.files) if labels else 0
        # The name of each label: the file's stem, or the help topic (None without labels).
        self.class_names: Optional[list[str]] = (
            [name if self.name == "pydoc_topics" else Path(name).stem for name in self.files]
            if labels
            else None
        )
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None
        if self._encoding is not None:
            self.num_tokens: Optional[int] = None  # known once the token file exists (setup)
            self._digest = self._stream_digest()
            return
        self.num_tokens = sum(len(d) for d in raw)  # characters (char) or bytes (byte) in all
        for file, document in zip(self.files, raw, strict=True):
            if len(document) < block_size + 1:
                raise ConfigError(
                    f"{file} has {len(document)} tokens, fewer than {_KEY}.block_size + 1 = "
                    f"{block_size + 1}: lower block_size or use a longer text"
                )
        self._digest = hashlib.sha256(b"\0".join(_as_bytes(d) for d in raw)).hexdigest()[:16]

    # ------------------------------------------------------------------ reading
    def _source(self) -> str:
        return f"{_KEY}.name={self.name}" if self.name is not None else f"{_KEY}.path={self.path}"

    def _read_corpus(self) -> tuple[list[str], Optional[list[Any]]]:
        """(document names, documents): str each for the char tokenizer, bytes for the byte one; the
        gpt2 tokenizer reads files only when it writes its token file (documents None)."""
        if self.name == "pydoc_topics":
            if self.path is not None:
                raise ConfigError(f"{_KEY}.name=pydoc_topics reads no file: remove {_KEY}.path")
            if self.labels:  # one document per help topic, labelled by the topic's name
                topics = pydoc_topics()
                names, texts = list(topics), list(topics.values())
            else:
                names, texts = ["pydoc_data.topics"], [pydoc_topics_text()]
            return list(names), [t if self.tokenizer == "char" else t.encode("utf-8") for t in texts]
        if self.name == "tiny_shakespeare":
            file = Path(self.path) if self.path is not None else Path(self.root) / TINY_SHAKESPEARE_FILE
            if not file.is_file() and self.download and self.path is None:
                self._download(file)
            if not file.is_file():
                raise DataNotFoundError(
                    f"Tiny Shakespeare not found at {str(file)!r}: pass --data.download true (needs "
                    f"internet) or --data.path to a local copy of {TINY_SHAKESPEARE_URL}"
                )
            files = [file]
        elif self.path is None:
            raise ConfigError(
                f"CharText needs a corpus: set {_KEY}.path (a text file or folder) or {_KEY}.name"
            )
        else:
            root = Path(self.path)
            if root.is_dir():
                files = sorted(root.glob("*.txt"))
                if not files:
                    raise DataNotFoundError(f"No .txt files in the folder {self.path!r} ({_KEY}.path)")
            elif root.is_file():
                files = [root]
            else:
                raise DataNotFoundError(f"{_KEY}.path={self.path!r}: no such file or folder")
        if self.tokenizer == "gpt2":
            for file in files:
                if file.stat().st_size == 0:
                    raise ConfigError(f"{file} is empty ({self._source()}): give a file with text in it")
            return [str(f) for f in files], None
        return [str(f) for f in files], [self._read_file(f) for f in files]

    def _drop_short_topics(self, raw: list[Any], block_size: int) -> list[Any]:
        """Keep the help topics whose training part holds a window of ``block_size + 1`` tokens; the
        few shorter ones are left out with a warning, so every block size can be labelled."""
        keep = [i for i, d in enumerate(raw) if int(len(d) * (1 - self.val_fraction)) >= block_size + 1]
        if len(keep) < len(raw):
            rank_zero_warn(
                f"{_KEY}.name=pydoc_topics with labels: {len(raw) - len(keep)} of {len(raw)} help topics "
                f"have training parts shorter than block_size + 1 = {block_size + 1} tokens and are left out"
            )
        if not keep:
            raise ConfigError(f"{_KEY}.block_size={block_size}: no help topic is that long; lower it")
        self.files = [self.files[i] for i in keep]
        return [raw[i] for i in keep]

    def _read_file(self, file: Path) -> Any:
        data = file.read_bytes()
        if not data:
            raise ConfigError(f"{file} is empty ({self._source()}): give a file with text in it")
        if self.tokenizer == "byte":
            return data
        try:
            return data.decode("utf-8")  # exactly the file's characters (no newline translation)
        except UnicodeDecodeError as err:
            raise ConfigError(
                f"{file} is not UTF-8 at byte offset {err.start} ({err.reason}): pass "
                f"--data.tokenizer byte, or re-encode the file as UTF-8"
            ) from err

    def _download(self, file: Path) -> None:
        """Fetch Tiny Shakespeare into ``file`` (written to a temporary name, then renamed: readers
        and concurrent downloads see the whole file or none)."""
        try:
            with (
                urllib.request.urlopen(TINY_SHAKESPEARE_URL, timeout=60) as response,
                atomic_file(file) as out,
            ):
                out.write(response.read())
        except OSError as err:  # URLError (no network) and HTTPError are OSErrors
            raise DataNotFoundError(
                f"Downloading Tiny Shakespeare into {str(file)!r} failed ({err}). Without internet, fetch "
                f"{TINY_SHAKESPEARE_URL} elsewhere and pass --data.path to it (or put it at {str(file)!r})."
            ) from err

    def prepare_data(self) -> None:
        if self.name == "tiny_shakespeare" and self.download and self.path is None:
            file = Path(self.root) / TINY_SHAKESPEARE_FILE
            if not file.is_file():
                self._download(file)
        if self._encoding is not None:
            self._token_file()

    # ------------------------------------------------------------------ the gpt2 token file
    def _cache_folder(self) -> Path:
        """``.lit_genai_tokens`` in ``root`` (no ``path``), in the folder ``path`` names, or beside it."""
        if self.path is None:
            return Path(self.root) / ".lit_genai_tokens"
        path = Path(self.path)
        return (path if path.is_dir() else path.parent) / ".lit_genai_tokens"

    def _stream_digest(self) -> str:
        """The token file's name: the tokenizer and the files' names, sizes and modification times (the
        help topics' text itself, which has no file)."""
        encoding = self._encoding
        digest = hashlib.sha256(f"{self.tokenizer}:{encoding.n_vocab}:{encoding.eot_token}".encode())
        if self.documents is not None:
            digest.update(b"".join(_as_bytes(d) for d in self.documents))
        for name in self.files:
            stat = Path(name).stat()
            digest.update(f"\0{Path(name).resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]

    def _token_file(self) -> Path:
        """Write the stream (each document's ``encode_ordinary`` ids, then ``eot_token``) as flat uint16
        once, as nanoGPT's openwebtext ``train.bin``, appending document by document; return its path."""
        file = self._cache_folder() / f"{self._digest}.bin"
        if file.is_file():
            return file
        documents = self.documents
        if documents is None:  # files, read one at a time
            documents = (self._read_file(Path(name)) for name in self.files)
        with atomic_file(file) as out:  # readers see the whole file or none
            for document in documents:
                ids = [*self._encoding.encode_ordinary(document), self._encoding.eot_token]
                np.asarray(ids, dtype=np.uint16).tofile(out)  # (N_d + 1,)
        return file

    # ------------------------------------------------------------------ tokens
    def _lookup(self) -> Optional[dict[str, int]]:
        return None if self.vocabulary is None else {s: i for i, s in enumerate(self.vocabulary)}

    def encode(self, text: str) -> Tensor:
        """A string -> its token ids, (T,) int64.

        Characters outside the vocabulary (char tokenizer) are one ``ConfigError`` naming them.
        """
        if self._encoding is not None:
            return torch.tensor(self._encoding.encode_ordinary(text), dtype=torch.long)  # (T,)
        if self._index is None:  # bytes
            return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)  # (T,)
        unknown = sorted(set(text) - self._index.keys())
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
            raise ConfigError(
                f"the text has {len(unknown)} character(s) outside the data's vocabulary of "
                f"{self.vocab_size}: {shown}; remove them (or train with {_KEY}.tokenizer byte)"
            )
        return torch.tensor([self._index[c] for c in text], dtype=torch.long)  # (T,)

    def decode(self, tokens: Tensor) -> list[str]:
        """The text medium: token ids (B, T) (or one row (T,)) -> B strings.

        Byte ids are decoded as UTF-8 with ``errors="replace"`` (a sample may stop inside a character).
        """
        ids = torch.as_tensor(tokens).detach().long().cpu()
        rows = (ids[None] if ids.dim() == 1 else ids).tolist()  # B lists of T ids
        bad = [i for row in rows for i in row if not 0 <= i < self.vocab_size]
        if bad:
            raise ConfigError(
                f"token id {bad[0]} is outside the data's vocabulary of {self.vocab_size}: the model was "
                "trained on other text (model vocab_size and data vocabulary differ)"
            )
        if self._encoding is not None:
            return [self._encoding.decode(row) for row in rows]
        if self.vocabulary is None:
            return [bytes(row).decode("utf-8", errors="replace") for row in rows]
        vocabulary = self.vocabulary
        return ["".join(vocabulary[i] for i in row) for row in rows]

    def _tokenize(self, document: Any) -> Tensor:
        """A document -> (N,) int64 ids: bytes as they are, characters by their vocabulary index."""
        if self.vocabulary is None:
            return torch.from_numpy(np.frombuffer(document, dtype=np.uint8).astype(np.int64))  # (N,)
        codes = np.array([ord(c) for c in self.vocabulary], dtype=np.uint32)  # (V,)
        order = np.argsort(codes)  # (V,): a checkpoint's vocabulary need not be sorted
        points = np.frombuffer(document.encode("utf-32-le"), dtype=np.uint32)  # (N,) code points
        rank = np.searchsorted(codes[order], points).clip(max=len(codes) - 1)  # (N,)
        ids = order[rank]  # (N,)
        missing = codes[ids] != points
        if missing.any():  # only after load_state_dict with another vocabulary
            char = chr(int(points[missing.argmax()]))
            raise ConfigError(
                f"the checkpoint's vocabulary ({self.vocab_size} symbols) lacks the character {char!r} "
                f"of {self._source()}: use the text the checkpoint was trained on"
            )
        return torch.from_numpy(ids.astype(np.int64))  # (N,)

    # ------------------------------------------------------------------ splits
    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is None:
            self._build_sets()

    def _build_sets(self) -> None:
        if self._encoding is not None:
            self._build_stream_sets()
            return
        block = self.block_size
        tokens, train_starts, train_docs, val_starts, val_docs = [], [], [], [], []
        offset = 0
        for doc, document in enumerate(self.documents):
            ids = self._tokenize(document)  # (N_d,)
            n = len(ids)
            cut = int(n * (1 - self.val_fraction))  # first (1 - val_fraction) trains, as nanoGPT
            if cut < block + 1:
                raise ConfigError(
                    f"{self.files[doc]}: its training part ({cut} of {n} tokens) is shorter than "
                    f"{_KEY}.block_size + 1 = {block + 1}: lower block_size or val_fraction"
                )
            starts = torch.arange(cut - block) + offset  # every window inside [0, cut)
            train_starts.append(starts)
            train_docs.append(torch.full_like(starts, doc))
            if self.val_fraction > 0:
                count = (n - cut - 1) // block  # windows of block + 1 tokens, stride block
                starts = cut + block * torch.arange(max(count, 0)) + offset
                val_starts.append(starts)
                val_docs.append(torch.full_like(starts, doc))
            tokens.append(ids)
            offset += n
        self.tokens = torch.cat(tokens)  # (N,) int64, documents back to back
        train, val = torch.cat(train_starts), torch.cat(val_starts) if val_starts else torch.zeros(0).long()
        if self.val_fraction > 0 and len(val) == 0:
            raise ConfigError(
                f"{_KEY}.val_fraction={self.val_fraction} leaves no validation window of "
                f"block_size + 1 = {block + 1} tokens in {self._source()}: raise val_fraction or lower "
                "block_size"
            )
        train_labels = torch.cat(train_docs) if self.labels else None
        val_labels = torch.cat(val_docs) if self.labels and val_docs else None
        n = self.steps_per_epoch * self.batch_size
        self.train_set = _RandomWindows(self.tokens, train, train_labels, block, self.seed, n)
        self.val_set = _FixedWindows(self.tokens, val, val_labels, block)
        self.test_set = self.val_set

    def _build_stream_sets(self) -> None:
        """The gpt2 splits: by position over the memory-mapped stream; starts are ranges, never arrays."""
        block = self.block_size
        self.tokens = _TokenFile(self._token_file())
        n = self.num_tokens = len(self.tokens)
        cut = int(n * (1 - self.val_fraction))  # first (1 - val_fraction) trains, as nanoGPT
        if cut < block + 1:
            raise ConfigError(
                f"{self._source()}: its training part ({cut} of {n} gpt2 tokens) is shorter than "
                f"{_KEY}.block_size + 1 = {block + 1}: lower block_size or val_fraction, or use more text"
            )
        count = max((n - cut - 1) // block, 0) if self.val_fraction > 0 else 0
        if self.val_fraction > 0 and count == 0:
            raise ConfigError(
                f"{_KEY}.val_fraction={self.val_fraction} leaves no validation window of "
                f"block_size + 1 = {block + 1} tokens in {self._source()}: raise val_fraction or lower "
                "block_size"
            )
        windows = self.steps_per_epoch * self.batch_size
        self.train_set = _RandomWindows(self.tokens, range(cut - block), None, block, self.seed, windows)
        self.val_set = _FixedWindows(self.tokens, range(cut, cut + block * count, block), None, block)
        self.test_set = self.val_set

    # ------------------------------------------------------------------ checkpoints and caches
    def state_dict(self) -> dict[str, Any]:
        """The tokenizer and its vocabulary: a checkpoint decodes samples without the corpus."""
        return {"tokenizer": self.tokenizer, "vocabulary": self.vocabulary}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the checkpoint's vocabulary (token ids then mean what they meant in training); the
        sets, if built, are re-encoded with it."""
        tokenizer = state_dict.get("tokenizer", self.tokenizer)
        if tokenizer != self.tokenizer:
            raise ConfigError(
                f"the checkpoint was trained with {_KEY}.tokenizer={tokenizer} but the data has "
                f"{self.tokenizer}: set {_KEY}.tokenizer {tokenizer}"
            )
        vocabulary = state_dict.get("vocabulary")
        vocabulary = None if vocabulary is None else list(vocabulary)
        if vocabulary == self.vocabulary:
            return
        self.vocabulary = vocabulary
        self.vocab_size = 256 if vocabulary is None else len(vocabulary)
        self._index = self._lookup()
        if self.train_set is not None:
            self._build_sets()

    def identity(self) -> dict[str, Any]:
        """What decides the validation / test windows (and, with ``batch_size``, the training ones), as
        a JSON-able dict: the class, every init argument but batching, loading and downloading
        (``path`` and ``root`` as absolute paths), and a digest of the corpus' contents (another
        text under the same path is another identity)."""
        cls = type(self)
        skip = {"self", "batch_size", "num_workers", "predict_samples", "download"}
        out: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}"}
        for name in inspect.signature(cls.__init__).parameters:
            if name in skip:
                continue
            value = getattr(self, name)
            if name in ("path", "root") and value is not None:
                value = str(Path(value).expanduser().resolve())
            out[name] = value
        out["content"] = self._digest
        return out


_GPT2_HINT = (
    "pip install tiktoken; its first use needs internet once to fetch the GPT-2 BPE files "
    "(or set TIKTOKEN_CACHE_DIR to a folder holding them)"
)


def _gpt2_encoding() -> Any:
    """``tiktoken.get_encoding("gpt2")``, or one line saying how to get it."""
    try:
        import tiktoken
    except ImportError as err:
        raise ConfigError(f"{_KEY}.tokenizer=gpt2 needs the tiktoken package: {_GPT2_HINT}") from err
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as err:  # offline: requests' ConnectionError; a bad cached file: ValueError
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise DataNotFoundError(
            f"{_KEY}.tokenizer=gpt2: loading the GPT-2 BPE files failed ({reason}): {_GPT2_HINT}"
        ) from err


def _as_bytes(document: Any) -> bytes:
    return document.encode("utf-8") if isinstance(document, str) else bytes(document)


def vocabulary_of(texts: Sequence[str]) -> list[str]:
    """The sorted set of the characters of ``texts`` (the char tokenizer's vocabulary)."""
    return sorted(set().union(*(set(t) for t in texts)))
