"""Prompt/response data for supervised fine-tuning of next-token models (instruction tuning).

Papers and code: Ouyang et al. 2022 (InstructGPT: supervised fine-tuning on demonstrations before
RLHF); Taori et al. 2023 (Stanford Alpaca: ``{"instruction", "input", "output"}`` records, the loss on
the response tokens only: ``train.py`` sets the prompt's labels to ``IGNORE_INDEX = -100``).

``PromptResponse`` reads a JSON Lines file (one record a line) or builds a named offline task
(``lit_genai.data.language_tasks``). A record is one of:

- Alpaca: ``{"instruction": ..., "input": ... (optional, may be empty), "output": ...}``;
- ``{"prompt": ..., "response": ...}``;
- multi-turn: ``{"messages": [{"role": "system" | "user" | "assistant" | ..., "content": ...}, ...]}``
  with at least one assistant turn; the loss covers every assistant turn.

Each record becomes a conversation, rendered by a template (``lit_genai.data.templates``: ``plain``,
``alpaca``, ``chatml`` or a YAML mapping) and tokenized (``char``: the sorted characters of every
rendered example; ``byte``; ``gpt2``: GPT-2's BPE through tiktoken), piece by piece, so each token
knows whether it is an assistant token.

Batches (docs/architecture.md, "Batches"): ``(x, y)`` int64 (B, T), T = ``block_size``, exactly as
``CharText``'s pairs, so ``ar.module.NextToken`` trains on them: ``x`` the example's first T tokens
(padded with id 0), ``y`` the next token at each position, ``-100`` (``IGNORE_INDEX``, which
``NextToken`` leaves out of its loss and likelihood metrics) where the next token is prompt (with
``mask_prompt``) or padding. An example longer than ``block_size + 1`` tokens is cut at its end, and
one warning counts them; one whose responses are cut away entirely is left out.

Splits: a named task's own (held-out items never train); a file's examples are permuted with
``seed`` and ``val_fraction`` of them validate (``test`` is the validation set, as ``CharText``).
``task_examples(split)`` gives ``(prompt, response)`` strings of a split for generation-based
evaluation: the prompt rendered up to where the last assistant turn starts, its reference content.

Shape legend: B batch, T block_size tokens, N examples of a split.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from lit_genai.data.checks import check_counts
from lit_genai.data.decoders import TextDecoder, decoder_state
from lit_genai.data.language_tasks import build_task
from lit_genai.data.loaders import SplitLoaders
from lit_genai.data.templates import Message, Template, get_template, render, render_prompt
from lit_genai.data.tokenizers import (
    char_index,
    decode_ids,
    encode_text,
    gpt2_encoding,
    gpt2_folder_digest,
    vocabulary_of,
)
from lit_genai.errors import ConfigError

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index; Alpaca's IGNORE_INDEX
PAD_ID = 0
_KEY = "data.init_args"
Conversation = list[Message]


def record_messages(record: Any, where: str) -> Conversation:
    """A JSONL record (module docstring) -> its conversation; one ``ConfigError`` line naming
    ``where`` (file and line) for a record of no known form, a missing field or an empty response."""
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ConfigError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        for i, m in enumerate(messages):
            if (
                not isinstance(m, dict)
                or not isinstance(m.get("role"), str)
                or not isinstance(m.get("content"), str)
            ):
                raise ConfigError(f"{where}: messages[{i}] needs string 'role' and 'content' fields")
        assistant = [m for m in messages if m["role"] == "assistant"]
        if not assistant:
            raise ConfigError(f"{where}: the messages have no 'assistant' turn to train on")
        if any(not m["content"].strip() for m in assistant):
            raise ConfigError(f"{where}: an assistant turn is empty: give every assistant turn some content")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if "instruction" in record or "output" in record:
        form, fields, response = "Alpaca", ("instruction", "output"), "output"
    elif "prompt" in record or "response" in record:
        form, fields, response = "prompt/response", ("prompt", "response"), "response"
    else:
        raise ConfigError(
            f"{where}: a record needs 'instruction' and 'output' (Alpaca), 'prompt' and 'response', or "
            f"'messages'; it has {sorted(record)}"
        )
    for name in fields + (("input",) if "input" in record else ()):
        if not isinstance(record.get(name), str):
            raise ConfigError(f"{where}: the {form} record has no string field {name!r}")
    if not record[response].strip():
        raise ConfigError(
            f"{where}: the response ({response!r}) is empty: give it some text or drop the record"
        )
    user = record[fields[0]]
    messages = [{"role": "user", "content": user}]
    if record.get("input"):
        messages.append({"role": "input", "content": record["input"]})
    return messages + [{"role": "assistant", "content": record[response]}]


def read_jsonl(path: Union[str, Path], template: Optional[Template] = None) -> list[Conversation]:
    """A JSON Lines file -> one conversation per non-blank line, or a ``.json`` file holding one list
    of records (Alpaca's ``alpaca_data.json``) -> one per record; a bad line or record (or, given
    ``template``, a role it does not know) is one ``ConfigError`` naming the file and its line or
    record number."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            f"{_KEY}.path={str(path)!r}: no such file (a JSON Lines file of prompt/response records)"
        )
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{file.name}: not valid JSON ({err.msg} at line {err.lineno})") from err
        if not isinstance(records, list):
            raise ConfigError(f"{file.name}: a .json file must hold a list of records (or use JSON Lines)")
        numbered = [(f"{file.name} record {i}", record) for i, record in enumerate(records)]
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{file.name} line {number}"
            try:
                numbered.append((where, json.loads(line)))
            except json.JSONDecodeError as err:
                raise ConfigError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from err
    out = []
    for where, record in numbered:
        messages = record_messages(record, where)
        if template is not None:
            checked(template, messages, where)
        out.append(messages)
    if not out:
        raise ConfigError(f"{_KEY}.path={str(path)!r} holds no records")
    return out


def checked(template: Template, messages: Conversation, where: str) -> None:
    """Render ``messages`` once: a role the template does not know is one line naming ``where``."""
    try:
        render(template, messages)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def base_vocabulary(path: str, needed: Sequence[str]) -> list[str]:
    """The char vocabulary of the checkpoint at ``path`` (its hyperparameter ``vocabulary``, as
    ``NextToken`` keeps it), checked to hold every character of ``needed``; one ``ConfigError`` line
    for a missing or unreadable file, a checkpoint without a vocabulary, or characters it lacks."""
    where = f"{_KEY}.vocabulary_from={path}"
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{where}: no such checkpoint file; train the base model first (lit-genai fit)")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors alike: the file is not usable
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ConfigError(f"{where}: cannot read the checkpoint ({first})") from None
    hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    vocabulary = hparams.get("vocabulary")
    if not vocabulary:
        raise ConfigError(f"{where}: the checkpoint has no char vocabulary (not a character-level model)")
    missing = sorted(set(needed) - set(vocabulary))
    if missing:
        shown = ", ".join(repr(c) for c in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise ConfigError(
            f"{where}: the examples use {len(missing)} character(s) the base model never saw: {shown}; "
            "remove them from the data or train the base model on text that has them"
        )
    return list(vocabulary)


def split_prompt(messages: Sequence[Message]) -> tuple[list[Message], str]:
    """(the turns before the last assistant turn, that turn's content)."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return list(messages[:last]), messages[last]["content"]


class PromptResponse(SplitLoaders, L.LightningDataModule):
    """Prompt/response examples (a JSONL file or a named task) as next-token pairs whose targets
    count the responses only (module docstring).

    Args:
        path: A JSON Lines file of records (Alpaca, prompt/response or messages), or a ``.json`` file
            of one list of them. Give ``path`` or ``task``.
        task: A named offline task of ``lit_genai.data.language_tasks`` (``numbers_fr``, ``numbers_de``,
            ``docstring_summary``, ``help_qa``), with its own held-out splits.
        template: ``plain``, ``alpaca``, ``chatml``, or a mapping ``{prefix: ..., roles: {user:
            "Q: {content}\\n", assistant: "A: {content}\\n"}}`` (``data.templates``).
        tokenizer: ``char`` (the sorted characters of all rendered examples), ``byte`` (256 ids) or
            ``gpt2`` (GPT-2 BPE through tiktoken, 50257 ids).
        tokenizer_folder: A local folder with GPT-2's vocab.json and merges.txt (a Hugging Face GPT-2
            folder) for tokenizer gpt2: no download.
        mask_prompt: Count the loss on the assistant tokens only (targets -100 elsewhere); False:
            on every token of the example (but padding).
        block_size: Tokens per sequence T; longer examples are cut at their end (one warning).
        batch_size: Examples per batch (also sample indices per predict batch).
        val_fraction: Share of a file's examples held out for validation (and test); for a task, the
            share of its items in val and again in test.
        seed: Seed of the split (file and task).
        vocabulary_from: A lit_genai checkpoint of a character-level model (the base that
            ``model.init_from`` fine-tunes): the ``char`` tokenizer takes its vocabulary, so every id
            means what it meant in pretraining; each character of the examples must be in it.
        num_workers: DataLoader worker processes; 0 loads in the main process.
        predict_samples: Number of samples ``trainer.predict`` asks the model for.
    """

    def __init__(
        self,
        path: Optional[str] = None,
        task: Optional[Literal["numbers_fr", "numbers_de", "docstring_summary", "help_qa"]] = None,
        template: Union[str, dict[str, Any]] = "plain",
        tokenizer: Literal["char", "byte", "gpt2"] = "char",
        tokenizer_folder: Optional[str] = None,
        mask_prompt: bool = True,
        block_size: int = 128,
        batch_size: int = 32,
        val_fraction: float = 0.1,
        seed: int = 0,
        vocabulary_from: Optional[str] = None,
        num_workers: int = 0,
        predict_samples: int = 8,
    ) -> None:
        super().__init__()
        check_counts(
            type(self).__name__,
            block_size=block_size,
            batch_size=batch_size,
            num_workers=num_workers,
            predict_samples=predict_samples,
        )
        if not 0 < val_fraction < 0.5:
            raise ConfigError(
                f"{_KEY}.val_fraction={val_fraction} must be in (0, 0.5): a held-out split is needed"
            )
        if vocabulary_from is not None and tokenizer != "char":
            raise ConfigError(
                f"{_KEY}.vocabulary_from is for the char tokenizer (a {tokenizer} tokenizer has fixed ids): "
                "drop it or set tokenizer char"
            )
        if tokenizer_folder is not None and tokenizer != "gpt2":
            raise ConfigError(
                f"{_KEY}.tokenizer_folder is GPT-2's vocab.json and merges.txt, for tokenizer gpt2 (not "
                f"{tokenizer}): drop it or set {_KEY}.tokenizer gpt2"
            )
        if (path is None) == (task is None):
            raise ConfigError(
                f"PromptResponse needs exactly one of {_KEY}.path (a JSONL file) and {_KEY}.task"
            )
        self.path, self.task, self.tokenizer, self.mask_prompt = path, task, tokenizer, mask_prompt
        self.block_size, self.batch_size, self.val_fraction = block_size, batch_size, val_fraction
        self.seed, self.num_workers, self.predict_samples = seed, num_workers, predict_samples
        self.tokenizer_folder = tokenizer_folder
        self.template: Template = get_template(template)
        self.conversations = self._read()  # split -> conversations (roles checked against the template)
        self._encoding = gpt2_encoding(tokenizer_folder) if tokenizer == "gpt2" else None
        if self._encoding is not None:
            self.vocabulary: Optional[list[str]] = None
            self.vocab_size = int(self._encoding.n_vocab)
        elif tokenizer == "char":
            texts = [s.text for c in self._all() for s in render(self.template, c)]
            own = vocabulary_of(texts + [self.template.start, self.template.end])
            self.vocabulary = own if vocabulary_from is None else base_vocabulary(vocabulary_from, own)
            self.vocab_size = len(self.vocabulary)
        else:
            self.vocabulary, self.vocab_size = None, 256
        self._index = char_index(self.vocabulary)
        self.num_classes, self.class_names = 0, None  # unlabelled: linked into the model as CharText's
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None
        self.truncated = 0  # examples cut at block_size + 1 tokens (counted by setup)
        self.dropped = 0  # examples left without a response token after the cut

    # ------------------------------------------------------------------ reading
    def _source(self) -> str:
        return f"{_KEY}.task={self.task}" if self.task is not None else f"{_KEY}.path={self.path}"

    def _read(self) -> dict[str, list[Conversation]]:
        """split -> conversations: the task's own splits, or the file's permuted with ``seed``."""
        if self.task is not None:
            splits = build_task(self.task, self.seed, self.val_fraction)
            out = {k: [record_messages(r, f"task {self.task}") for r in v] for k, v in splits.items()}
            for messages in out["train"][:1]:  # a task's records all have the same roles
                checked(self.template, messages, self._source())
            return out
        conversations = read_jsonl(self.path, self.template)
        order = list(range(len(conversations)))
        random.Random(self.seed).shuffle(order)
        n_val = max(1, round(len(order) * self.val_fraction))
        if len(order) <= n_val:
            raise ConfigError(
                f"{self._source()} has {len(order)} records: too few to hold {n_val} out for validation"
            )
        val = [conversations[i] for i in order[:n_val]]
        return {"train": [conversations[i] for i in order[n_val:]], "val": val, "test": val}

    def _all(self) -> list[Conversation]:
        return [c for split in ("train", "val", "test") for c in self.conversations[split]]

    # ------------------------------------------------------------------ tokens
    def encode(self, text: str) -> Tensor:
        """A string -> its token ids, (T,) int64 (``data.tokenizers.encode_text``)."""
        return encode_text(text, self._encoding, self._index, self.vocab_size)

    def decode(self, tokens: Tensor) -> list[str]:
        """The text medium: token ids (B, T) (or one row (T,)) -> B strings."""
        return decode_ids(tokens, self._encoding, self.vocabulary, self.vocab_size)

    def render_prompt(self, prompt: Union[str, Sequence[Message]]) -> str:
        """A user text (or the turns before the answer) as the template renders a prompt, ending
        where the assistant's answer starts: what to give ``model.sampling.prompt``."""
        return render_prompt(self.template, prompt)

    def task_examples(self, split: str = "val") -> list[tuple[str, str]]:
        """``(prompt, reference response)`` of each example of ``split`` (``val``, ``test``, or
        ``train`` to measure what fine-tuning memorised): the prompt rendered up to where the last
        assistant turn starts, that turn's content."""
        if split not in ("train", "val", "test"):
            raise ConfigError(f"task_examples(split={split!r}): use 'train', 'val' or 'test'")
        out = []
        for messages in self.conversations[split]:
            before, response = split_prompt(messages)
            out.append((render_prompt(self.template, before), response))
        return out

    def example(self, messages: Sequence[Message]) -> tuple[Tensor, Tensor, bool]:
        """One conversation -> (x (T,), y (T,) with -100 at prompt and padding, whether it was cut)."""
        ids, trained = [], []
        for segment in render(self.template, messages):
            piece = self.encode(segment.text).tolist()
            ids += piece
            trained += [segment.trained] * len(piece)
        cut = len(ids) > self.block_size + 1
        ids, trained = ids[: self.block_size + 1], trained[: self.block_size + 1]
        x = torch.full((self.block_size,), PAD_ID, dtype=torch.long)
        y = torch.full((self.block_size,), IGNORE_INDEX, dtype=torch.long)
        x[: len(ids) - 1] = torch.tensor(ids[:-1], dtype=torch.long)
        targets = torch.tensor(ids[1:], dtype=torch.long)  # target t is token t + 1
        if self.mask_prompt:
            targets[~torch.tensor(trained[1:], dtype=torch.bool)] = IGNORE_INDEX
        y[: len(ids) - 1] = targets
        return x, y, cut

    # ------------------------------------------------------------------ splits
    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is None:
            self._build_sets()

    def _build_sets(self) -> None:
        sets, cut, dropped, total = {}, 0, 0, 0
        for split in ("train", "val", "test"):
            xs, ys = [], []
            repeated = split == "test" and self.conversations["test"] is self.conversations["val"]
            for messages in self.conversations[split]:
                x, y, was_cut = self.example(messages)
                kept = bool((y != IGNORE_INDEX).any())
                if not repeated:  # a file's test set is its validation set: counted once
                    total, cut, dropped = total + 1, cut + was_cut, dropped + (not kept)
                if kept:
                    xs.append(x)
                    ys.append(y)
            if not xs:
                raise ConfigError(
                    f"{self._source()}: no {split} example keeps a response token within "
                    f"{_KEY}.block_size={self.block_size}: raise block_size"
                )
            sets[split] = TensorDataset(torch.stack(xs), torch.stack(ys))  # (N, T), (N, T)
        self.truncated, self.dropped = cut, dropped
        if cut:
            rank_zero_warn(
                f"{self._source()}: {cut} of {total} examples are longer than {_KEY}.block_size + 1 = "
                f"{self.block_size + 1} tokens and were cut at their end ({dropped} lost their whole "
                "response and are left out): raise block_size to keep them"
            )
        self.train_set, self.val_set, self.test_set = sets["train"], sets["val"], sets["test"]

    # ------------------------------------------------------------------ checkpoints
    @property
    def prompt_template(self) -> dict[str, Any]:
        """The template as plain strings, linked into ``NextToken.prompt_template`` by the command
        line: a text prompt of ``sample`` / ``predict`` is rendered as the training prompts were."""
        return {"prefix": self.template.prefix, "roles": dict(self.template.roles)}

    @property
    def decoder(self) -> TextDecoder:
        """What ``decode`` does: token ids -> strings through this tokenizer and vocabulary."""
        vocabulary = None if self.vocabulary is None else tuple(self.vocabulary)
        folder = self.tokenizer_folder
        folder = None if folder is None else str(Path(folder).expanduser().resolve())
        return TextDecoder(self.tokenizer, vocabulary, self.vocab_size, folder)

    def state_dict(self) -> dict[str, Any]:
        """The tokenizer, its vocabulary and the template: a checkpoint decodes samples and renders
        prompts without the data (``lit_genai.data.decoders``)."""
        return decoder_state(
            self.decoder, tokenizer=self.tokenizer, vocabulary=self.vocabulary, template=self.prompt_template
        )

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Take the checkpoint's vocabulary (token ids then mean what they meant in training)."""
        tokenizer = state_dict.get("tokenizer", self.tokenizer)
        if tokenizer != self.tokenizer:
            raise ConfigError(
                f"the checkpoint was trained with {_KEY}.tokenizer={tokenizer} but the data has "
                f"{self.tokenizer}: set {_KEY}.tokenizer {tokenizer}"
            )
        vocabulary = state_dict.get("vocabulary")
        vocabulary = None if vocabulary is None else list(vocabulary)
        if vocabulary != self.vocabulary:
            self.vocabulary = vocabulary
            self.vocab_size = len(vocabulary) if vocabulary is not None else self.vocab_size
            self._index = char_index(vocabulary)
            if self.train_set is not None:
                self._build_sets()

    def identity(self) -> dict[str, Any]:
        """What decides the examples, as a JSON-able dict (``CharText.identity``'s role): the class,
        the arguments but batching and loading, and a digest of the rendered examples."""
        cls = type(self)
        text = json.dumps(self.conversations, sort_keys=True) + json.dumps(dict(self.template.roles))
        # The local GPT-2 files as their digest, and only when given (older identities stay as they were).
        folder = self.tokenizer_folder
        bpe = {} if folder is None else {"tokenizer_folder": gpt2_folder_digest(folder)}
        return {
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "path": None if self.path is None else str(Path(self.path).expanduser().resolve()),
            "task": self.task,
            "tokenizer": self.tokenizer,
            "mask_prompt": self.mask_prompt,
            "block_size": self.block_size,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "content": hashlib.sha256(text.encode()).hexdigest()[:16],
            **bpe,
        }
