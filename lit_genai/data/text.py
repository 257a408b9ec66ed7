"""Character-, byte- and GPT-2-token text for next-token models (karpathy/nanoGPT, data/shakespeare_char,
data/openwebtext).

``CharText`` reads a corpus — a text file, a folder of ``.txt`` files (one document each), Tiny
Shakespeare (karpathy/char-rnn) or the Python standard library's help topics
(``pydoc_data.topics``, always offline) — in ``__init__``, so that ``vocab_size``, ``block_size``,
``num_classes`` and ``vocabulary`` exist before any batch is drawn and the command line links them
into the model (docs/architecture.md, "Data and model").

Tokenizers (``lit_genai.data.tokenizers``):

- ``"char"``: the sorted set of the characters of the whole corpus (all documents, all splits), as
  nanoGPT's ``data/shakespeare_char/prepare.py``: Tiny Shakespeare gives 65 symbols.
  ``vocabulary`` is that list of characters; it also travels in the data module's ``state_dict()``,
  so a checkpoint can turn token ids back into text without the corpus.
- ``"byte"``: the UTF-8 bytes of the files, 256 ids; any file can be read. ``vocabulary`` is None;
  ``decode`` decodes a row's bytes as UTF-8 with ``errors="replace"``.
- ``"gpt2"``: GPT-2's byte-pair encoding through ``tiktoken`` (optional), 50257 ids, ``vocabulary``
  None. As nanoGPT's ``data/openwebtext/prepare.py``, all documents, each followed by
  ``<|endoftext|>``, form one stream, written once as a flat uint16 file in ``.lit_genai_tokens/``
  next to the data and memory-mapped afterwards (``lit_genai.data.token_file``), so the corpus never
  has to fit in memory. The file is written by ``prepare_data`` or ``setup`` (the files are not read
  in ``__init__``; ``num_tokens`` is None until then). Splits are by position over the whole stream
  (nanoGPT's ``data[:int(n * 0.9)]``), so windows may span ``<|endoftext|>`` between documents;
  ``labels`` is not available.

Corpora are read by ``lit_genai.data.text_sources``; windows are drawn by
``lit_genai.data.text_windows``.

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
from pathlib import Path
from typing import Any, Literal, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import Dataset

from lit_genai.data.checks import Folder, check_counts
from lit_genai.data.decoders import TextDecoder, decoder_state
from lit_genai.data.loaders import SplitLoaders
from lit_genai.data.text_sources import (
    pydoc_topics,
    pydoc_topics_text,
    read_document,
    text_files,
    tiny_shakespeare_file,
)
from lit_genai.data.text_windows import FixedWindows, RandomWindows
from lit_genai.data.token_file import TokenFile, cache_folder, stream_digest, write_token_file
from lit_genai.data.tokenizers import (
    as_bytes,
    char_index,
    decode_ids,
    document_ids,
    encode_text,
    gpt2_encoding,
    gpt2_folder_digest,
    vocabulary_of,
)
from lit_genai.errors import ConfigError

_KEY = "data.init_args"


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
        tokenizer_folder: A local folder with GPT-2's vocab.json and merges.txt (a Hugging Face GPT-2
            folder) for tokenizer gpt2: no download.
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
        tokenizer_folder: Optional[str] = None,
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
        check_counts(
            type(self).__name__,
            block_size=block_size,
            batch_size=batch_size,
            steps_per_epoch=steps_per_epoch,
            num_workers=num_workers,
            predict_samples=predict_samples,
        )
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"{_KEY}.val_fraction={val_fraction} must be in [0, 1)")
        self.path, self.name, self.root, self.download = path, name, root, download
        self.tokenizer, self.block_size, self.batch_size = tokenizer, block_size, batch_size
        self.val_fraction, self.steps_per_epoch, self.labels = val_fraction, steps_per_epoch, labels
        self.seed, self.num_workers, self.predict_samples = seed, num_workers, predict_samples
        self.tokenizer_folder = tokenizer_folder

        if tokenizer_folder is not None and tokenizer != "gpt2":
            raise ConfigError(
                f"{_KEY}.tokenizer_folder is GPT-2's vocab.json and merges.txt, for tokenizer gpt2 (not "
                f"{tokenizer}): drop it or set {_KEY}.tokenizer gpt2"
            )
        self._encoding = None
        if tokenizer == "gpt2":  # tiktoken's own files, or the folder's
            self._encoding = gpt2_encoding() if tokenizer_folder is None else gpt2_encoding(tokenizer_folder)
        if tokenizer_folder is not None and "<|endoftext|>" not in self._encoding.special_tokens_set:
            raise ConfigError(
                f"{_KEY}.tokenizer_folder={tokenizer_folder}: its vocab.json has no <|endoftext|>, which "
                "separates the documents of the gpt2 stream"
            )
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
        self._index = char_index(self.vocabulary)
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
        self._digest = hashlib.sha256(b"\0".join(as_bytes(d) for d in raw)).hexdigest()[:16]

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
            files = [tiny_shakespeare_file(self.path, self.root, self.download)]
        elif self.path is None:
            raise ConfigError(
                f"CharText needs a corpus: set {_KEY}.path (a text file or folder) or {_KEY}.name"
            )
        else:
            files = text_files(self.path)
        if self.tokenizer == "gpt2":
            for file in files:
                if file.stat().st_size == 0:
                    raise ConfigError(f"{file} is empty ({self._source()}): give a file with text in it")
            return [str(f) for f in files], None
        return [str(f) for f in files], [self._read_document(f) for f in files]

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

    def _read_document(self, file: Path) -> Any:
        """A file's text (bytes for the byte tokenizer)."""
        return read_document(file, self.tokenizer == "byte", self._source())

    def prepare_data(self) -> None:
        if self.name == "tiny_shakespeare" and self.download and self.path is None:
            tiny_shakespeare_file(None, self.root, download=True)
        if self._encoding is not None:
            self._token_file()

    # ------------------------------------------------------------------ the gpt2 token file
    def _stream_digest(self) -> str:
        """The token file's name (``token_file.stream_digest``)."""
        folder = self.tokenizer_folder  # a local vocabulary: its files' digest (another stream)
        tokenizer = self.tokenizer if folder is None else f"{self.tokenizer}:{gpt2_folder_digest(folder)}"
        return stream_digest(tokenizer, self._encoding, self.documents, self.files)

    def _token_file(self) -> Path:
        """The stream's uint16 file, written once (``token_file.write_token_file``); its path."""
        file = cache_folder(self.path, self.root) / f"{self._digest}.bin"
        documents = self.documents
        if documents is None:  # files, read one at a time
            documents = (self._read_document(Path(name)) for name in self.files)
        return write_token_file(file, self._encoding, documents)

    def write_folders(self) -> list[Folder]:
        """The folder of the gpt2 token file when it is still to be written (none for char and byte
        text, read in ``__init__``), which the command line checks before anything runs
        (``lit_genai.cli_checks.check_writable``)."""
        if self._encoding is None:
            return []
        folder = cache_folder(self.path, self.root)
        if (folder / f"{self._digest}.bin").is_file():
            return []
        where = f"{_KEY}.path" if self.path is not None else f"{_KEY}.root"
        fix = f"copy the text to a writable folder and pass --{where.replace('.init_args', '')} to it"
        return [Folder(f"the gpt2 token file folder (next to {where})", folder, fix)]

    # ------------------------------------------------------------------ tokens
    def encode(self, text: str) -> Tensor:
        """A string -> its token ids, (T,) int64.

        Characters outside the vocabulary (char tokenizer) are one ``ConfigError`` naming them.
        """
        return encode_text(text, self._encoding, self._index, self.vocab_size)  # (T,)

    def decode(self, tokens: Tensor) -> list[str]:
        """The text medium: token ids (B, T) (or one row (T,)) -> B strings.

        Byte ids are decoded as UTF-8 with ``errors="replace"`` (a sample may stop inside a character).
        """
        return decode_ids(tokens, self._encoding, self.vocabulary, self.vocab_size)

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
            ids = document_ids(document, self.vocabulary, self._source())  # (N_d,)
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
        self.train_set = RandomWindows(self.tokens, train, train_labels, block, self.seed, n)
        self.val_set = FixedWindows(self.tokens, val, val_labels, block)
        self.test_set = self.val_set

    def _build_stream_sets(self) -> None:
        """The gpt2 splits: by position over the memory-mapped stream; starts are ranges, never arrays."""
        block = self.block_size
        self.tokens = TokenFile(self._token_file())
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
        self.train_set = RandomWindows(self.tokens, range(cut - block), None, block, self.seed, windows)
        self.val_set = FixedWindows(self.tokens, range(cut, cut + block * count, block), None, block)
        self.test_set = self.val_set

    # ------------------------------------------------------------------ checkpoints and caches
    def state_dict(self) -> dict[str, Any]:
        """The tokenizer and its vocabulary, and the media decoder made of them: a checkpoint decodes
        samples without the corpus (``lit_genai.data.decoders``)."""
        return decoder_state(self.decoder, tokenizer=self.tokenizer, vocabulary=self.vocabulary)

    @property
    def decoder(self) -> TextDecoder:
        """What ``decode`` does: token ids -> strings through this tokenizer and vocabulary."""
        vocabulary = None if self.vocabulary is None else tuple(self.vocabulary)
        folder = self.tokenizer_folder
        folder = None if folder is None else str(Path(folder).expanduser().resolve())
        return TextDecoder(self.tokenizer, vocabulary, self.vocab_size, folder)

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
        self._index = char_index(self.vocabulary)
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
            if name == "tokenizer_folder":  # its files' digest, only when given (older identities stay)
                if value is not None:
                    out[name] = gpt2_folder_digest(value)
                continue
            if name in ("path", "root") and value is not None:
                value = str(Path(value).expanduser().resolve())
            out[name] = value
        out["content"] = self._digest
        return out
