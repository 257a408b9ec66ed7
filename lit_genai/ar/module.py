"""Autoregressive next-token prediction as a LightningModule: a GPT trained on text (or any tokens).

Papers and code: Radford et al. 2018/2019 (GPT, GPT-2: decoder-only transformers trained by
next-token prediction); Karpathy's nanoGPT (``model.py``: ``configure_optimizers`` parameter groups;
``train.py``: ``get_lr``, warm-up + cosine decay; ``config/train_shakespeare_char.py``), whose
recipe ``experiments/ar/shakespeare_char.yaml`` repeats; Loshchilov & Hutter 2019 (AdamW, decoupled
weight decay); Ho & Salimans 2022 (label dropout for classifier-free guidance).

The network is injected (``net``, e.g. ``lit_genai.nn.transformer.GPT``: ``(idx (B, T), cond (B,)
or None) -> logits (B, T, V)``); the sampling loop lives in ``lit_genai.ar.sampling``. This file
wires them together and keeps the generative-module contract (docs/architecture.md, "Generative
modules"): ``sample`` returns token ids (n, T), ``modality`` says which media route they take.

Likelihood metrics (docs/architecture.md, "Metric names"), all from the exact NLL of the next
token, averaged over every token of the split:
    ``<stage>/loss`` = ``<stage>/nll_nats``: mean NLL per token in nats (here per token, not per
        sequence: a sequence is just a window of the text);
    ``<stage>/ppl`` = exp(loss): perplexity per token;
    ``<stage>/bpd`` = loss / ln 2: bits per token, i.e. bits per character for the char tokenizer.

Shape legend: B batch, T tokens (block_size), V vocabulary size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from lit_genai import paradigm
from lit_genai.ar.sampling import generate
from lit_genai.errors import ConfigError
from lit_genai.hparams import save_plain_hyperparameters
from lit_genai.metrics.likelihood import bits_per_dim, perplexity

# Inference-time choices: not stored as hyperparameters, so that `predict`/`test` take them from the
# command line (LightningCLI lets a checkpoint's hyperparameters override the command line).
SAMPLING_OPTIONS = ("max_new_tokens", "temperature", "top_k", "top_p", "prompt")

Prompt = Union[str, Sequence[int], Tensor, None]


# ---------------------------------------------------------------------- optimisation (pure)


def nanogpt_lr(step: int, lr: float, warmup_steps: int, decay_steps: Optional[int], min_lr: float) -> float:
    """The learning rate at optimisation step ``step`` (0-based): nanoGPT ``train.py`` ``get_lr``.

    Linear warm-up ``lr (step + 1) / (warmup_steps + 1)`` for ``step < warmup_steps``, then a cosine
    from ``lr`` down to ``min_lr`` at ``step = decay_steps``, then ``min_lr``. ``decay_steps=None``
    keeps ``lr`` after the warm-up.
    """
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if decay_steps is None:
        return lr
    if step > decay_steps or decay_steps <= warmup_steps:
        return min_lr
    ratio = (step - warmup_steps) / (decay_steps - warmup_steps)  # in [0, 1]
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def decay_parameter_names(net: nn.Module) -> tuple[list[str], list[str]]:
    """(names that get weight decay, names that do not), as nanoGPT's ``configure_optimizers``.

    Every parameter with two or more dimensions (the weights of linear layers) decays; biases and
    norm gains (one dimension) do not, and, unlike nanoGPT, neither do embeddings (``nn.Embedding``
    weights, and so a token embedding tied to the output layer). Each shared parameter is listed
    once, under its first name (``named_parameters``).
    """
    embeddings = {id(m.weight) for m in net.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(name)
    return decay, no_decay


def parameter_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: ``decay_parameter_names`` with ``weight_decay``, the rest with 0.

    Each group also carries its parameter ``names`` (kept by torch optimisers, plain strings)."""
    params = dict(net.named_parameters())
    decay, no_decay = decay_parameter_names(net)
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": weight_decay, "names": decay},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0, "names": no_decay},
    ]
    return [g for g in groups if g["params"]]


# ---------------------------------------------------------------------- loading weights


def load_net_weights(net: nn.Module, path: str, key: str = "model.init_from") -> None:
    """Copy the ``net.`` weights of a lit_genai checkpoint into ``net`` (fine-tuning).

    Read with ``torch.load(weights_only=True)``; the checkpoint's training weights (not an EMA) are
    used. A missing or unreadable file, a checkpoint without ``net.`` weights, and weights of other
    names or shapes are one ``ConfigError`` line each, naming ``key``.
    """
    where = f"{key}={path}"
    if not Path(path).expanduser().is_file():
        raise ConfigError(f"{where}: no such checkpoint file; pass a checkpoint saved by lit-genai fit")
    try:
        checkpoint = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors alike: the file is not usable
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ConfigError(f"{where}: cannot read the checkpoint ({first})") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    weights = {k[len("net.") :]: v for k, v in (state or {}).items() if k.startswith("net.")}
    if not weights:
        raise ConfigError(f"{where}: holds no net.* weights; pass a checkpoint of a module with a `net`")
    own = net.state_dict()
    for name, value in weights.items():
        if name in own and own[name].shape != value.shape:
            raise ConfigError(
                f"{where}: net.{name} has shape {list(value.shape)} there but {list(own[name].shape)} "
                "here: give model.net the checkpoint's network settings"
            )
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if missing or unexpected:
        what = f"lacks net.{missing[0]}" if missing else f"has net.{unexpected[0]}, which model.net lacks"
        raise ConfigError(f"{where}: {what}: give model.net the checkpoint's network settings")
    net.load_state_dict(weights, strict=True)


# ---------------------------------------------------------------------- the module


class NextToken(LightningModule):
    """Next-token prediction: cross-entropy of every position's logits, sampling token by token.

    Args:
        net: ``(idx (B, T) int64, cond (B,) int64 or None) -> logits (B, T, V)``, e.g.
            ``lit_genai.nn.transformer.GPT``. A class-conditional net (``num_classes > 0``) gets the
            batch's labels, and the null label ``num_classes`` when they are dropped.
        vocab_size: Number of token ids V; linked from the data module.
        block_size: Tokens per training sequence; linked from the data. The net's context
            (``net.block_size``) must be at least this long.
        num_classes: Classes the data offers (0 = unlabelled); linked from the data module. The
            network decides whether they are used.
        vocabulary: The symbol of each token id (characters for char-level text); linked from the
            data, so a checkpoint encodes prompts and decodes samples without the data on disk.
        modality: Which media route the samples take: token ids of ``text``, or of quantised
            ``audio`` / ``image`` data (decoded by the data module).
        p_uncond: Probability of replacing a training label by the null label (classifier-free
            guidance, Ho & Salimans 2022); only for a class-conditional net.
        optimizer: Optimiser of the network, built on two parameter groups (``weight_decay``):
            nanoGPT's AdamW, lr 6e-4 with betas (0.9, 0.95) for GPT-2, (0.9, 0.99) for Shakespeare.
        weight_decay: Weight decay of the parameters with two or more dimensions except embeddings
            (``decay_parameter_names``); biases, norms and embeddings get none. It replaces the
            optimiser's own ``weight_decay``.
        warmup_steps: Linear LR warm-up over this many optimisation steps (nanoGPT ``warmup_iters``).
        lr_decay_steps: Cosine decay of the LR to ``min_lr`` at this step (nanoGPT
            ``lr_decay_iters``); None = the trainer's ``max_steps`` when set, else no decay.
        min_lr: The LR at the end of the decay; None = a tenth of the optimiser's LR.
        compile: Train and evaluate through ``torch.compile(net)`` (the plain net samples). The
            compiled wrapper is kept outside the module tree, so checkpoint keys stay ``net.*``.
        init_from: A lit_genai checkpoint whose ``net.*`` weights are loaded before training
            (fine-tuning); a resumed run (``--ckpt_path``) continues from its own weights instead.
        max_new_tokens: Tokens ``sample`` generates after the prompt.
        temperature: Softmax temperature of sampling (0 = greedy).
        top_k: Sample among the k most likely tokens only (None = all).
        top_p: Nucleus sampling: among the smallest set of tokens with probability >= p (None = off).
        prompt: Text every sample starts with (encoded with ``vocabulary``; without a vocabulary,
            token ids separated by spaces or commas). None: a newline when the vocabulary has one,
            else token 0.
        seed: Base seed of ``predict``: sample i uses the generator seed + i (``paradigm.predict_step``).
    """

    ema_target = "net"
    sampling_options = SAMPLING_OPTIONS
    sampling_settings = paradigm.sampling_settings
    predict_step = paradigm.predict_step

    def __init__(
        self,
        net: nn.Module,
        vocab_size: int = 65,
        block_size: int = 256,
        num_classes: int = 0,
        vocabulary: Optional[list[str]] = None,
        modality: Literal["text", "audio", "image"] = "text",
        p_uncond: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        weight_decay: float = 0.1,
        warmup_steps: int = 0,
        lr_decay_steps: Optional[int] = None,
        min_lr: Optional[float] = None,
        compile: bool = False,
        init_from: Optional[str] = None,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        prompt: Optional[str] = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        save_plain_hyperparameters(self, objects=("net", "optimizer"), ignore=SAMPLING_OPTIONS)
        self.net = net
        self.modality = modality
        self.vocab_size, self.block_size = vocab_size, block_size
        self.num_classes = getattr(net, "num_classes", num_classes)  # the classes the model uses
        self.vocabulary = list(vocabulary) if vocabulary is not None else None
        self.optimizer = optimizer
        self.max_new_tokens, self.temperature, self.prompt = max_new_tokens, temperature, prompt
        self.top_k, self.top_p = top_k, top_p
        paradigm.check_net(net, "model.net", vocab_size=vocab_size, num_classes=num_classes)
        context = getattr(net, "block_size", None)
        if context is not None and context < block_size:
            raise ConfigError(
                f"model.net.block_size={context} but the data's sequences have block_size={block_size}: "
                f"set model.net.init_args.block_size: {block_size} (or a smaller data.block_size)"
            )
        if self.vocabulary is not None and len(self.vocabulary) != vocab_size:
            raise ConfigError(
                f"model.vocabulary has {len(self.vocabulary)} symbols but vocab_size={vocab_size}: "
                "remove model.init_args.vocabulary, the command line links it from the data"
            )
        self._nll_total: Optional[Tensor] = None  # (2,): summed NLL (nats) and tokens of this evaluation
        self.__dict__["_compiled"] = None  # torch.compile(net), outside the module tree (no state-dict keys)

    # ------------------------------------------------------------------ training and evaluation

    def forward(self, idx: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """(B, T) token ids, (B,) labels -> logits (B, T, V), through the compiled net when asked for."""
        net = self._training_net()
        return net(idx, cond) if self.num_classes > 0 else net(idx)

    def setup(self, stage: str) -> None:
        # Before Lightning restores a --ckpt_path, so a resumed fine-tuning run keeps its own weights.
        if stage == "fit" and self.hparams.get("init_from"):
            load_net_weights(self.net, self.hparams.init_from)

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        x, y, c = self._unpack(batch)  # (B, T), (B, T), (B,) or None
        if c is not None and self.hparams.p_uncond > 0:
            # Label dropout for classifier-free guidance (Ho & Salimans 2022, Algorithm 1).
            u = paradigm.this_rank(lambda n: torch.rand(n, device=c.device), c.shape[0], self._trainer)
            c = torch.where(u < self.hparams.p_uncond, torch.full_like(c, self.num_classes), c)
        loss = self._token_nll(x, y, c).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._accumulate_nll(batch)

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._accumulate_nll(batch)

    def on_validation_epoch_start(self) -> None:
        self._nll_total = None

    def on_test_epoch_start(self) -> None:
        self._nll_total = None

    def on_validation_epoch_end(self) -> None:
        self._log_likelihood("val")

    def on_test_epoch_end(self) -> None:
        self._log_likelihood("test")

    def configure_optimizers(self):
        optimizer = self.optimizer(parameter_groups(self.net, self.hparams.weight_decay))
        warmup, decay_steps = self.hparams.warmup_steps, self.hparams.lr_decay_steps
        if decay_steps is None and self._trainer is not None and (self.trainer.max_steps or 0) > 0:
            decay_steps = self.trainer.max_steps
        if warmup <= 0 and decay_steps is None:
            return optimizer
        lr = optimizer.defaults["lr"]
        min_lr = lr / 10 if self.hparams.min_lr is None else self.hparams.min_lr

        def factor(step: int) -> float:  # LambdaLR multiplies each group's initial LR (all equal lr)
            return nanogpt_lr(step, lr, warmup, decay_steps, min_lr) / lr

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        cond: Optional[Tensor] = None,
        generator: paradigm.Generators = None,
        prompt: Prompt = None,
        max_new_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        progress: bool = False,
    ) -> Tensor:
        """Draw ``n`` sequences: token ids (n, T0 + max_new_tokens), the prompt's T0 tokens first.

        ``prompt``: text (encoded with the vocabulary), token ids, or None for the module's
        ``prompt`` setting. ``cond`` (n,) labels of a class-conditional model (None: the null
        label). The same ``generator`` seed gives the same sequences; it may also be one generator
        per sample (``paradigm.sample_generators``). Options default to the module's settings.
        ``progress`` shows a bar over the new tokens.
        """
        start = self.encode(self.prompt if prompt is None else prompt).to(self.device)  # (T0,)
        idx = start.unsqueeze(0).expand(n, -1).contiguous()  # (n, T0)
        if self.num_classes > 0:
            cond = torch.full((n,), self.num_classes, device=self.device) if cond is None else cond
            cond = cond.to(self.device, torch.long)
        else:
            cond = None
        with paradigm.eval_mode(self.net):
            return generate(
                self.net,
                idx,
                self.max_new_tokens if max_new_tokens is None else max_new_tokens,
                cond=cond,
                temperature=self.temperature if temperature is None else temperature,
                top_k=self.top_k if top_k is None else top_k,
                top_p=self.top_p if top_p is None else top_p,
                generator=generator,
                progress=progress,
            )  # (n, T0 + max_new_tokens)

    def encode(self, prompt: Prompt) -> Tensor:
        """A prompt as token ids (T0,) int64: text through the vocabulary, ids as they are.

        None gives the start token: a newline when the vocabulary has one (nanoGPT ``sample.py``),
        else token 0. Text with symbols outside the vocabulary is one ``ConfigError`` line.
        """
        if prompt is None or (isinstance(prompt, str) and not prompt):
            start = self.vocabulary.index("\n") if self.vocabulary and "\n" in self.vocabulary else 0
            return torch.tensor([start], dtype=torch.long)
        if isinstance(prompt, Tensor):
            return prompt.detach().to("cpu", torch.long).flatten()
        if not isinstance(prompt, str):
            return torch.tensor([int(t) for t in prompt], dtype=torch.long)
        if self.vocabulary is None:
            if not re.fullmatch(r"\s*\d+(\s*[,\s]\s*\d+)*\s*", prompt):
                raise ConfigError(
                    "model.prompt: a text prompt needs the vocabulary (model.vocabulary, linked from "
                    "character-level data); without one give token ids, e.g. '0 5 7'"
                )
            return torch.tensor([int(t) for t in re.findall(r"\d+", prompt)], dtype=torch.long)
        return torch.tensor(self._encode_text(prompt), dtype=torch.long)

    def decode(self, ids: Tensor) -> list[str]:
        """(B, T) token ids -> B strings through the vocabulary (the data module's ``decode`` does
        the same for char data; this one needs no data)."""
        if self.vocabulary is None:
            raise ConfigError("decode needs model.vocabulary (linked from character-level data)")
        return ["".join(self.vocabulary[i] for i in row) for row in ids.tolist()]

    # ------------------------------------------------------------------ helpers

    def _training_net(self) -> nn.Module:
        if not self.hparams.get("compile"):
            return self.net
        if self._compiled is None:
            self.__dict__["_compiled"] = torch.compile(self.net)
        return self._compiled

    def _unpack(self, batch: Sequence[Tensor]) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """(x, y) or (x, y, c) -> x (B, T), y (B, T), labels (B,) or None (unused by an unconditional net)."""
        x, y = batch[0], batch[1]
        c = batch[2] if len(batch) > 2 and self.num_classes > 0 else None
        return x, y, c

    def _token_nll(self, x: Tensor, y: Tensor, c: Optional[Tensor]) -> Tensor:
        """NLL in nats of every target token, (B * T,): the cross-entropy of the logits (B, T, V)."""
        logits = self(x, c)  # (B, T, V); bf16 under bf16-mixed, so the softmax is taken in float32
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none")

    def _accumulate_nll(self, batch: Sequence[Tensor]) -> None:
        nll = self._token_nll(*self._unpack(batch)).detach()  # (B * T,)
        total = torch.stack([nll.sum(), torch.tensor(float(nll.numel()), device=nll.device)])
        self._nll_total = total if self._nll_total is None else self._nll_total + total

    def _log_likelihood(self, stage: str) -> None:
        """``<stage>/loss`` (= ``nll_nats``), ``ppl`` and ``bpd`` from the mean NLL per token of the
        whole split, summed over the ranks' batches first (so ppl is exp of the split's mean)."""
        if self._nll_total is None:
            return
        total = self.trainer.strategy.reduce(self._nll_total, reduce_op="sum")  # (2,) over ranks
        nll = total[0] / total[1]
        self._nll_total = None
        self.log(f"{stage}/loss", nll, prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/nll_nats", nll, sync_dist=True)
        self.log(f"{stage}/ppl", perplexity(nll), sync_dist=True)
        self.log(f"{stage}/bpd", bits_per_dim(nll, 1), sync_dist=True)  # bits per token (character)

    def _encode_text(self, text: str) -> list[int]:
        """Greedy longest match of the vocabulary's symbols (one character each for char data)."""
        ids = {s: i for i, s in enumerate(self.vocabulary)}
        longest = max(len(s) for s in self.vocabulary)
        out, i, unknown = [], 0, []
        while i < len(text):
            for length in range(min(longest, len(text) - i), 0, -1):
                if text[i : i + length] in ids:
                    out.append(ids[text[i : i + length]])
                    i += length
                    break
            else:
                unknown.append(text[i])
                i += 1
        if unknown:
            shown = "".join(sorted(set(unknown)))
            raise ConfigError(
                f"model.prompt has characters outside the vocabulary: {shown!r}; use only the "
                "training text's characters"
            )
        return out
