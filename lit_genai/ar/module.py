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

Batches: text pairs ``(x, y[, c])`` (``data.text.CharText``) or token sequences
``(tokens, labels)`` (``data.tokens.ImageTokens``, ``data.pixels.ImagePixels``), split into inputs
and targets by the net's ``target_offset`` (1: logits at t predict token t + 1, GPT; 0: they
predict token t from the tokens before it, PixelCNN); see ``NextToken._unpack``.

Targets ``-100`` (``IGNORE_INDEX``: the prompt and padding of prompt/response data,
``data.prompt_response``) are left out of the loss and of every metric below, which count the
scored tokens only.

Likelihood metrics (docs/architecture.md, "Metric names"), all from the exact NLL of every target
token of the split:
    ``<stage>/loss``: mean NLL per token in nats;
    ``<stage>/nll_nats``: NLL per example: an image's (a sequence's) summed NLL for token
        sequences, as PixelCNN papers report nats per image; per token for text windows (a window
        is just a slice of the text);
    ``<stage>/ppl`` = exp(loss): perplexity per token;
    ``<stage>/bpd`` = loss / ln 2: bits per token, i.e. bits per character for the char tokenizer
        and bits per dimension for pixels.

Shape legend: B batch, T tokens (block_size), V vocabulary size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lit_genai import paradigm
from lit_genai.ar.chat import prompt_text, response
from lit_genai.ar.sampling import generate, generate_in_place
from lit_genai.ar.task_evaluation import evaluate_task
from lit_genai.conditions import Cond, DropoutProbability, as_conditions, condition_dropout, drop_labels
from lit_genai.data.templates import get_template
from lit_genai.errors import ConfigError
from lit_genai.hparams import save_plain_hyperparameters
from lit_genai.media.text import log_text, write_text_listing
from lit_genai.metrics.likelihood import bits_per_dim, perplexity
from lit_genai.nn.lora import LoRAConfig, apply_lora, merged, trainable_parameters
from lit_genai.token_models import (  # noqa: F401  (nanogpt_lr & co. are also importable from here)
    TokenTraining,
    decay_parameter_names,
    load_net_weights,
    nanogpt_lr,
    parameter_groups,
)

Prompt = Union[str, Sequence[int], Tensor, None]
IGNORE_INDEX = -100  # a target left out of the loss and the metrics (F.cross_entropy's default)


@dataclass(frozen=True)
class NextTokenSampling(paradigm.SamplingSettings):
    """Inference-time settings of next-token sampling (docs/architecture.md, "Sampling settings").

    Args:
        max_new_tokens: Tokens ``sample`` generates after the prompt (nets with ``target_offset``
            0, PixelCNN, fill their ``block_size`` positions and ignore it).
        temperature: Softmax temperature of sampling (0 = greedy).
        top_k: Sample among the k most likely tokens only (None = all).
        top_p: Nucleus sampling: among the smallest set of tokens with probability >= p (None = off).
        prompt: What every sample starts with: text (encoded with the module's ``vocabulary``;
            without a vocabulary, token ids separated by spaces or commas), or token ids. None: a
            newline when the vocabulary has one, else token 0.
        class_label: Condition every sample on this class: its name in ``class_names`` or its
            index (a class-conditional net only). None: ``predict`` cycles through the classes
            (sample i gets class i mod num_classes) and ``sample`` uses the given ``cond``.
        conversation: The turns so far, for a model fine-tuned on prompt/response data (its
            ``prompt_template``): a JSON file of ``{"messages": [{"role", "content"}, ...]}`` or the
            list of turns; every sample is the next assistant turn (``ar.chat``). Replaces ``prompt``.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    prompt: Optional[Union[str, list[int]]] = None  # sample(prompt=...) also takes a tensor of ids
    class_label: Optional[Union[str, int]] = None
    conversation: Optional[Union[str, list[dict[str, str]]]] = None


# ---------------------------------------------------------------------- the module


class NextToken(TokenTraining, LightningModule):
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
        class_names: The name of each class (e.g. the help topic or file of a document); linked
            from the data, so ``class_label`` can name a class.
        vocabulary: The symbol of each token id (characters for char-level text); linked from the
            data, so a checkpoint encodes prompts and decodes samples without the data on disk.
        modality: Which media route the samples take: token ids of ``text``, or of quantised
            ``audio`` / ``image`` data (decoded by the data module).
        p_uncond: Probability of replacing a training condition by its null value (classifier-free
            guidance, Ho & Salimans 2022; ``label``: the null label), one for every condition the
            model uses or one per name (``{label: 0.1}``); only for a conditional net.
        optimizer: Optimiser of the network, built on two parameter groups (``weight_decay``):
            nanoGPT's AdamW, lr 6e-4 with betas (0.9, 0.95) for GPT-2, (0.9, 0.99) for Shakespeare.
        weight_decay: Weight decay of the weights of linear and convolution layers
            (``decay_parameter_names``, chosen by layer and name, so FSDP's flattening changes
            nothing); biases, norms and embeddings get none. It replaces the optimiser's own
            ``weight_decay``.
        warmup_steps: Linear LR warm-up over this many optimisation steps (nanoGPT ``warmup_iters``).
        lr_decay_steps: Cosine decay of the LR to ``min_lr`` at this step (nanoGPT
            ``lr_decay_iters``); None = the trainer's ``max_steps`` when set, else no decay.
        min_lr: The LR at the end of the decay; None = a tenth of the optimiser's LR.
        compile: Train and evaluate through ``torch.compile(net)`` (the plain net samples). The
            compiled wrapper is kept outside the module tree, so checkpoint keys stay ``net.*``.
        init_from: A lit_genai checkpoint whose ``net.*`` weights are loaded before training
            (fine-tuning); a resumed run (``--ckpt_path``) continues from its own weights instead.
        seed: Base seed of ``predict``: sample i uses the generator seed + i (``paradigm.predict_step``).
        sampling: Inference-time settings (``NextTokenSampling``); kept out of checkpoints.
        lora: Low-rank adapters (Hu et al. 2022, ``lit_genai.nn.lora.LoRAConfig``: rank, alpha,
            dropout, targets) on the net's linear layers; the net's own weights are frozen and only
            the adapters train. ``init_from`` loads a base checkpoint without adapters.
        task_max_new_tokens: With a prompt/response data module (``data.PromptResponse``), ``test``
            also answers its test prompts greedily with up to this many tokens and logs exact match,
            chrF, BLEU and ROUGE-L (``_log_task_scores``); 0: no generation. Not saved in checkpoints.
        prompt_template: The prompt template of prompt/response data (``data.templates``; linked from
            ``data.PromptResponse``): a text ``prompt`` of ``sample`` / ``predict`` is rendered with it
            (``"translate to French: five"`` -> ``"translate to French: five\n"`` with ``plain``), as
            the training prompts were; prompts given as token ids are taken as they are.
    """

    ema_target = "net"
    sampling_settings = paradigm.sampling_settings
    predict_step = paradigm.predict_step

    def __init__(
        self,
        net: nn.Module,
        vocab_size: int = 65,
        block_size: int = 256,
        num_classes: int = 0,
        class_names: Optional[list[str]] = None,
        vocabulary: Optional[list[str]] = None,
        modality: Literal["text", "audio", "image"] = "text",
        p_uncond: DropoutProbability = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        weight_decay: float = 0.1,
        warmup_steps: int = 0,
        lr_decay_steps: Optional[int] = None,
        min_lr: Optional[float] = None,
        compile: bool = False,
        init_from: Optional[str] = None,
        seed: int = 0,
        sampling: NextTokenSampling = NextTokenSampling(),
        lora: Optional[LoRAConfig] = None,
        task_max_new_tokens: int = 0,
        prompt_template: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        # task_max_new_tokens is a setting of an evaluation, not of the model: kept out of checkpoints
        save_plain_hyperparameters(self, objects=("net", "optimizer"), ignore=("task_max_new_tokens",))
        self.task_max_new_tokens = int(task_max_new_tokens)
        self.task_protocol: Optional[dict[str, Any]] = None  # how the last task scores were measured
        self.template = None if prompt_template is None else get_template(prompt_template)
        self.net = net
        if lora is not None:  # LoRA (lit_genai.nn.lora): frozen net, trainable adapters
            lora = LoRAConfig.of(lora)  # a checkpoint's hyperparameters give it back as a dict
            self.hparams["lora"] = self._hparams_initial["lora"] = lora.plain()  # weights_only-readable
            apply_lora(net, lora)
            trainable, total = trainable_parameters(net)
            rank_zero_info(
                f"LoRA rank {lora.rank} on {list(lora.targets)}: {trainable:,} of {total:,} parameters train"
            )
        self.modality = modality
        self.vocab_size, self.block_size = vocab_size, block_size
        self.num_classes = getattr(net, "num_classes", num_classes)  # the classes the model uses
        self.vocabulary = list(vocabulary) if vocabulary is not None else None
        self.optimizer = optimizer
        self.sampling = sampling
        # label (a class-conditional net), mels (a net with local conditioning: a WaveNet vocoder)
        local = ("mels",) if int(getattr(net, "local_channels", 0) or 0) > 0 else ()
        self.conditions = (*paradigm.conditions_of(self.num_classes), *local)
        self._dropout = condition_dropout(p_uncond, paradigm.conditions_of(self.num_classes), "model")
        self.class_names = list(class_names) if class_names is not None else None
        paradigm.check_net(net, "model.net", vocab_size=vocab_size, num_classes=num_classes)
        if getattr(net, "causal", True) is False:  # GPT(causal=False): each position would see its target
            raise ConfigError(
                "model.net attends both ways (causal: false) but next-token prediction needs a causal net: "
                "set model.net.init_args.causal: true (or use MaskedTokens)"
            )
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
        # Logits at position t predict token t + 1 (GPT) or token t itself (PixelCNN): ``_unpack``.
        self.target_offset = int(getattr(net, "target_offset", 1))
        if self.target_offset == 0 and context is not None and context != block_size:
            raise ConfigError(
                f"model.net.block_size={context} positions but the data's sequences have "
                f"block_size={block_size}: give model.net the data's shape"
            )
        self._sequences = False  # whether the last batch held token sequences (not text pairs)
        self._nll_total: Optional[Tensor] = None  # (3,): summed NLL (nats), tokens, examples
        self.__dict__["_compiled"] = None  # torch.compile(net), outside the module tree (no state-dict keys)

    # ------------------------------------------------------------------ training and evaluation

    def forward(self, idx: Tensor, cond: Optional[Tensor] = None, local: Optional[Tensor] = None) -> Tensor:
        """(B, T) token ids, (B,) labels, (B, C, frames) local features -> logits (B, T, V), through
        the compiled net when asked for."""
        net = self._training_net()
        cond = cond if self.num_classes > 0 else None
        if local is not None:  # local conditioning (WaveNet on log-mel frames)
            return net(idx, cond, local=local)
        return net(idx, cond) if cond is not None else net(idx)

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        x, y, c, local = self._unpack(batch)  # (B, T), (B, T), (B,) or None, (B, C, frames) or None
        c = drop_labels(c, self._dropout, self.num_classes, self._trainer)  # classifier-free guidance
        nll, kept = self._token_nll(x, y, c, local), self._kept(y)  # (B * T,) each
        loss = nll.sum() / kept.sum().clamp(min=1)  # mean over the scored targets (not -100 ones)
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
        self._log_task_scores("test")

    def sample(
        self,
        n: int,
        *,
        cond: Cond = None,
        generator: paradigm.Generators = None,
        progress: bool = False,
        **options: Any,
    ) -> Tensor:
        """Draw ``n`` sequences: token ids (n, T0 + max_new_tokens), the prompt's T0 tokens first;
        for a net with ``target_offset = 0`` (PixelCNN), (n, block_size): every position of a
        sequence (an image), after the prompt's tokens if one is given.

        ``cond``: named conditions (``lit_genai.conditions``): ``label`` (n,) of a class-conditional
        model (None: the null label; a bare tensor means labels), ``mels`` (n, C, frames) local
        features covering the prompt and the new tokens (a WaveNet vocoder's log-mel frames).
        ``options``: ``NextTokenSampling`` fields (``prompt``: text through the vocabulary or
        token ids; ``temperature``, ``top_k``, ...), defaulting to ``self.sampling``. The same
        ``generator`` seed gives the same sequences; it may also be one generator per sample
        (``paradigm.sample_generators``). ``progress`` shows a bar over the new tokens.
        """
        settings = self.sampling.replace(**options)
        conditions = as_conditions(cond, self.conditions, f"{type(self).__name__}.sample()")
        labels, local = conditions.get("label"), conditions.get("mels")
        if settings.class_label is not None:  # one class for every sample, by name or index
            labels = torch.full((n,), self.class_index(settings.class_label), device=self.device)
        if self.num_classes > 0:
            labels = torch.full((n,), self.num_classes, device=self.device) if labels is None else labels
            labels = labels.to(self.device, torch.long)
        draw = dict(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p)
        prompt = prompt_text(self.template, settings.prompt, settings.conversation)  # as in fine-tuning
        if self.target_offset == 0:  # fill all block_size positions in order, the prompt's first
            return generate_in_place(
                self.net,
                n,
                self.block_size,
                prompt=None if prompt is None or prompt == "" else self.encode(prompt),
                cond=labels,
                generator=generator,
                device=self.device,
                progress=progress,
                **draw,
            )  # (n, block_size)
        start = self.encode(prompt).to(self.device)  # (T0,)
        idx = start.unsqueeze(0).expand(n, -1).contiguous()  # (n, T0)
        with paradigm.eval_mode(self.net), merged(self.net):  # LoRA adapters folded into the weights
            return generate(
                self.net,
                idx,
                settings.max_new_tokens,
                cond=labels,
                generator=generator,
                local=None if local is None else local.to(self.device),
                progress=progress,
                **draw,
            )  # (n, T0 + max_new_tokens)

    def class_index(self, label: Union[str, int]) -> int:
        """A class given by name (``class_names``) or index -> its index; one ``ConfigError`` line
        for an unconditional model or an unknown class."""
        if self.num_classes == 0:
            raise ConfigError(
                f"model.sampling.class_label={label!r} but the model is unconditional: train with "
                "data.init_args.labels true and a class-conditional net (model.net.init_args.num_classes)"
            )
        if isinstance(label, str) and self.class_names is not None and label in self.class_names:
            return self.class_names.index(label)
        if isinstance(label, int) or (isinstance(label, str) and label.strip().isdigit()):
            index = int(label)
            if 0 <= index < self.num_classes:
                return index
        known = (
            ", ".join(self.class_names[:8]) + ", ..." if self.class_names else f"0 .. {self.num_classes - 1}"
        )
        raise ConfigError(f"model.sampling.class_label={label!r} is not one of the model's classes ({known})")

    def response(self, text: str, **options: Any) -> Optional[tuple[str, bool]]:
        """With a prompt template and a text prompt or conversation (``options`` over
        ``self.sampling``): (the response in the decoded sample ``text``, cut at the template's
        stop; whether the stop was reached), ``ar.chat.response``. None otherwise."""
        settings = self.sampling.replace(**options)
        prompt = prompt_text(self.template, settings.prompt, settings.conversation)
        if self.template is None or not isinstance(prompt, str):
            return None
        return response(text, prompt, self.template.stop)

    def responses(self, texts: list[str], **options: Any) -> list[str]:
        """Decoded samples as a user reads them (``paradigm.finished``): a fine-tuned model's
        responses (``response``), other text as it is."""
        cut = [self.response(text, **options) for text in texts]
        return [text if part is None else part[0] for text, part in zip(texts, cut, strict=True)]

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
        if self.vocabulary is None and (tokenize := self._text_tokenizer()) is not None:
            return tokenize(prompt).to("cpu", torch.long).flatten()  # byte / GPT-2 BPE text
        if self.vocabulary is None:
            if not re.fullmatch(r"\s*\d+(\s*[,\s]\s*\d+)*\s*", prompt):
                raise ConfigError(
                    "model.sampling.prompt: a text prompt needs the vocabulary (model.vocabulary, "
                    "linked from character-level data); without one give token ids, e.g. '0 5 7'"
                )
            return torch.tensor([int(t) for t in re.findall(r"\d+", prompt)], dtype=torch.long)
        return torch.tensor(self._encode_text(prompt), dtype=torch.long)

    def _text_tokenizer(self) -> Optional[Any]:
        """text -> ids (T,) for a text model without a char vocabulary (byte, GPT-2 BPE): the loaded
        checkpoint's decoder (``lit_genai.load``) or the attached data module; None without either."""
        if self.modality != "text":
            return None
        decoder = getattr(self, "media_decoder", None)
        if callable(getattr(decoder, "encode", None)):
            return decoder.encode
        data = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return data.encode if callable(getattr(data, "encode", None)) else None

    def _unpack(self, batch: Sequence[Tensor]) -> tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
        """A batch -> inputs x, targets y, labels (B,) or None (unused by an unconditional net),
        local features (B, C, frames) or None.

        Text pairs ``(x (B, T), y (B, T)[, c (B,)])`` are used as they are. Token sequences
        ``(tokens (B, N), labels (B,)[, local (B, C, frames)])`` (image tokens, pixels, audio with
        its log-mel frames) are split by the net's ``target_offset``: 1 -> x = tokens[:, :-1],
        y = tokens[:, 1:]; 0 -> x = y = tokens.
        """
        self._sequences = len(batch) in (2, 3) and batch[1].dim() == 1
        local = None
        if self._sequences:
            tokens, c = batch[0], batch[1]
            x, y = (tokens, tokens) if self.target_offset == 0 else (tokens[:, :-1], tokens[:, 1:])
            local = batch[2] if len(batch) == 3 else None
        else:
            x, y = batch[0], batch[1]
            c = batch[2] if len(batch) > 2 else None
        return x, y, (c if self.num_classes > 0 else None), local

    def _token_nll(self, x: Tensor, y: Tensor, c: Optional[Tensor], local: Optional[Tensor] = None) -> Tensor:
        """NLL in nats of every target token, (B * T,): the cross-entropy of the logits (B, T, V);
        0 at targets ``IGNORE_INDEX`` (-100: prompt and padding of ``data.prompt_response``)."""
        logits = self(x, c, local)  # (B, T, V); bf16 under bf16-mixed, so the softmax is taken in float32
        return F.cross_entropy(
            logits.flatten(0, 1).float(), y.flatten(), reduction="none", ignore_index=IGNORE_INDEX
        )

    @staticmethod
    def _kept(y: Tensor) -> Tensor:
        """(B * T,) float: 1 where the target is scored, 0 where it is ``IGNORE_INDEX``."""
        return (y.flatten() != IGNORE_INDEX).float()

    def _accumulate_nll(self, batch: Sequence[Tensor]) -> None:
        x, y, c, local = self._unpack(batch)
        nll = self._token_nll(x, y, c, local).detach()  # (B * T,)
        tokens = self._kept(y).sum()  # the scored targets: all but -100 (prompt, padding)
        examples = torch.full_like(tokens, float(y.shape[0])) if self._sequences else tokens
        total = torch.stack([nll.sum(), tokens, examples])  # (3,): nats, tokens, examples
        self._nll_total = total if self._nll_total is None else self._nll_total + total

    def _log_task_scores(self, stage: str) -> None:
        """Generation-based task metrics (``ar.task_evaluation``) on a prompt/response data module's
        ``task_examples(stage)``, with ``task_max_new_tokens`` > 0: ``<stage>/exact_match``,
        ``chrf``, ``bleu``, ``rougeL`` (greedy answers cut at the template's ``stop``), and a few
        prompt / reference / output rows for the loggers and ``predictions/task_<stage>.txt``."""
        data = getattr(self.trainer, "datamodule", None)
        if self.task_max_new_tokens <= 0 or not callable(getattr(data, "task_examples", None)):
            return
        examples = data.task_examples(stage)
        if not examples:
            return
        stop = getattr(getattr(data, "template", None), "stop", None) or "\n"
        scores, rows = evaluate_task(
            self,
            examples,
            self.task_max_new_tokens,
            stop=(stop,),
            encode=lambda text: data.encode(text).tolist(),  # the data's tokenizer: char, byte or GPT-2
            decode=lambda ids: data.decode(torch.tensor([list(ids)], dtype=torch.long))[0],
        )
        for name, value in scores.items():  # every rank answers every prompt: the same numbers
            self.log(f"{stage}/{name}", value, sync_dist=True)
        self.task_protocol = {
            "split": stage,
            "examples": len(examples),
            "greedy": True,
            "max_new_tokens": self.task_max_new_tokens,
            "stop": stop,
        }
        texts = [
            f"prompt: {r['prompt'].rstrip()}\nreference: {r['reference']}\noutput: {r['output']}"
            for r in rows
        ]
        log_text(self.trainer, f"{stage}/task_examples", texts)
        if self.trainer.is_global_zero:
            folder = Path(self.trainer.default_root_dir) / "predictions"
            write_text_listing(
                folder / f"task_{stage}.txt", [f"example {i}" for i in range(len(texts))], texts
            )

    def _log_likelihood(self, stage: str) -> None:
        """``<stage>/loss`` (mean NLL per token), ``nll_nats``, ``ppl`` and ``bpd`` of the whole
        split, summed over the ranks' batches first (so ppl is exp of the split's mean).

        ``nll_nats`` is per example: per sequence (an image's summed NLL, as PixelCNN papers report)
        for token-sequence data, per token for text windows (a window is not an example).
        ``bpd`` is bits per token: per character for char text, per dimension for pixels.
        """
        if self._nll_total is None:
            return
        total = self.trainer.strategy.reduce(self._nll_total, reduce_op="sum")  # (3,) over ranks
        nll = total[0] / total[1]
        self._nll_total = None
        self.log(f"{stage}/loss", nll, prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/nll_nats", total[0] / total[2], sync_dist=True)
        self.log(f"{stage}/ppl", perplexity(nll), sync_dist=True)
        self.log(f"{stage}/bpd", bits_per_dim(nll, 1), sync_dist=True)
