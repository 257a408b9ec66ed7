"""Masked-token generation as a LightningModule: MaskGIT for image tokens, BERT-style masks for text.

Papers: Chang et al. 2022 ("MaskGIT: Masked Generative Image Transformer", sec. 3.2: masked
visual token modelling with a mask schedule, iterative parallel decoding); Devlin et al. 2019
(BERT: a bidirectional transformer predicting masked tokens); Ho & Salimans 2022 (label dropout
for classifier-free guidance).

Training (MaskGIT sec. 3.2): per sequence r ~ U[0, 1), ceil(gamma(r) N) of its N positions, chosen
uniformly at random, are replaced by the [MASK] id, and the loss is the cross-entropy of the
network's logits at the masked positions only, averaged over the masked tokens of the batch.
The [MASK] id is the data's ``vocab_size`` (one id past the data's tokens), so the network has
``vocab_size + 1`` token ids; its logit for [MASK] is never a prediction (it is sliced off).

Sampling: ``lit_genai.masked.sampling.maskgit_decode`` from an all-[MASK] sequence of
``block_size`` tokens, or from a prompt with holes: text where ``hole`` characters mark the
positions to fill (the positions after the prompt, up to ``block_size``, are filled too).

Text-to-image (Muse, Chang et al. 2023, sec. 2.2: MaskGIT conditioned on a caption through
cross-attention): with a network whose ``text_encoder`` is set (``GPT(text_encoder=...)``) the module
uses the ``text`` condition (``lit_genai.text_condition``): batches ``(tokens, attrs or labels,
captions)`` (``data.tokens.ImageTokens`` over captioned images) are tokenized with the data's
``text_vocabulary``, dropped to the empty caption with ``p_uncond``'s probability for ``text``,
encoded and passed to the network as ``context``; ``sample(n, cond={"text": captions})`` draws
for captions, guided by ``guidance`` against the empty caption. Without a ``text`` condition,
samples take the ``caption`` setting (sample i: caption i % len), not ``prompt``, which here means
the sequence's own known tokens.

The network is injected (``net``: ``lit_genai.nn.transformer.GPT`` with ``causal: false``,
``(idx (B, N), cond (B,) or None, context=None) -> (B, N, V + 1)``); it keeps the generative-module contract
(docs/architecture.md, "Generative modules"). The optimiser groups, nanoGPT's LR schedule,
``compile``, ``init_from`` and the vocabulary text are ``lit_genai.token_models.TokenTraining``'s,
shared with ``ar.module.NextToken``.

Metrics (docs/architecture.md, "Metric names"): ``train/loss``; ``<stage>/loss``, the mean NLL
in nats of the masked tokens of the whole split (masks from a fixed seed, so every validation
scores the same positions), and ``<stage>/acc``, the share of masked tokens predicted exactly
(argmax).

Shape legend: B batch, N tokens per sequence (block_size), V the data's vocabulary size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from lit_genai import paradigm
from lit_genai.conditions import Cond, DropoutProbability, as_conditions, condition_dropout, drop_labels
from lit_genai.errors import ConfigError
from lit_genai.hparams import save_plain_hyperparameters
from lit_genai.masked.inpainting import inpainting_start, load_tokenizer, setting_sources
from lit_genai.masked.sampling import maskgit_decode
from lit_genai.masked.schedules import Schedule, num_to_mask
from lit_genai.nn.cross_attention import TextContext
from lit_genai.text_condition import TextCondition, prompts_for, text_encoder_of
from lit_genai.token_models import TokenTraining

Prompt = Union[str, Sequence[int], Tensor, None]
_NET = "model.init_args.net.init_args"
EVAL_SEED = 0
"""Seed of the validation and test masks: batch k of rank r in a world of W ranks is masked from
``manual_seed(EVAL_SEED + k * W + r)`` (``paradigm.evaluation_generator``)."""


@dataclass(frozen=True)
class MaskedSampling(paradigm.SamplingSettings):
    """Inference-time settings of MaskGIT decoding (docs/architecture.md, "Sampling settings").

    Args:
        steps: Decoding steps T (MaskGIT: 8 for 256 x 256 images).
        choice_temperature: Temperature of the Gumbel noise that picks the positions kept masked,
            annealed to 0 over the steps (MaskGIT: 4.5).
        temperature: Softmax temperature of the token draws (0 = the most likely token).
        top_k: Draw among the k most likely tokens only (None = all).
        guidance: Classifier-free guidance weight w, logits l_c + w (l_c - l_u) (0 = conditional).
        prompt: What samples start from: text (through the module's ``vocabulary``; without one,
            token ids separated by spaces or commas) whose ``hole`` characters are filled, as are
            the positions after it up to ``block_size``; or token ids (the [MASK] id or a negative
            id is a hole). None: every position is generated.
        hole: The prompt character that marks a position to fill (it cannot then stand for itself).
        caption: The caption(s) of samples drawn without a ``text`` condition, for a text-conditional
            model: one string, or a list whose entry i % len sample i takes (``predict`` writes which
            in ``prompts.txt``). None: the empty caption (unconditional). Not ``prompt``, which is
            the sequence's own tokens here (the diffusion modules call their caption ``prompt``).
        init_image: Image inpainting: a PNG, or a folder of PNGs (sample i: file i % len), whose
            tokens outside ``mask`` are kept and the rest decoded (``sample(cond={"image": ...})``
            gives images or their token ids directly). Needs ``tokenizer``. None: no source.
        mask: The region to fill: a PNG (white = fill) or ``left_half``, ``right_half``,
            ``top_half``, ``bottom_half``, ``center`` (``media.sources``); a token is kept only if
            all of its pixels are known (``sampling.token_fill_mask``). None with a source: fill nothing.
        tokenizer: The VQ-VAE checkpoint that turns source images into tokens: the data's
            (``data.init_args.tokenizer``).
    """

    steps: int = 8
    choice_temperature: float = 4.5
    temperature: float = 1.0
    top_k: Optional[int] = None
    guidance: float = 0.0
    prompt: Optional[Union[str, list[int]]] = None  # sample(prompt=...) also takes a tensor of ids
    hole: str = "_"
    caption: Optional[Union[str, list[str]]] = None
    init_image: Optional[str] = None
    mask: Optional[str] = None
    tokenizer: Optional[str] = None


def random_masks(counts: Tensor, scores: Tensor) -> Tensor:
    """The ``counts[i]`` positions of row i with the smallest ``scores``: a uniformly random subset
    of that size when the scores are i.i.d. uniforms.

    Args:
        counts: (B,) int64 positions to mask per row, in [0, N].
        scores: (B, N) distinct random numbers.

    Returns:
        (B, N) bool, True at the masked positions; row i has exactly ``counts[i]`` of them.
    """
    rank = scores.argsort(1).argsort(1)  # (B, N): 0 for the smallest score
    return rank < counts[:, None].to(rank.device)


class MaskedTokens(TokenTraining, LightningModule):
    """Masked-token modelling (MaskGIT / BERT-style) of image tokens or text, sampled by parallel decoding.

    Args:
        net: ``(idx (B, N) int64, cond (B,) int64 or None) -> logits (B, N, vocab_size + 1)``, a
            bidirectional network: ``lit_genai.nn.transformer.GPT`` with ``causal: false`` and
            ``vocab_size`` = the data's + 1 (the last id is [MASK]). A class-conditional net gets
            the batch's labels, and the null label ``num_classes`` when they are dropped. A net with a
            ``text_encoder`` gets the captions' ``context`` (module docstring).
        vocab_size: The data's number of token ids V (without [MASK]); linked from the data module.
        block_size: Tokens per sequence N; linked from the data. Samples have this length.
        num_classes: Classes the data offers (0 = unlabelled); linked from the data module. The
            network decides whether they are used.
        vocabulary: The symbol of each token id (characters for char-level text); linked from the
            data, so a checkpoint encodes prompts and decodes samples without the data on disk.
        modality: Which media route the samples take: ``image`` tokens (decoded by the data module,
            e.g. ``data.tokens.ImageTokens``) or ``text``.
        schedule: The mask schedule gamma of training and decoding (``masked.schedules``; MaskGIT:
            cosine).
        label_smoothing: Label smoothing of the training cross-entropy (MaskGIT's reference training
            uses 0.1); validation and test report the plain NLL.
        p_uncond: Probability of replacing a training condition by its null value (classifier-free
            guidance, Ho & Salimans 2022; ``label``: the null label; ``text``: the empty caption),
            one for every condition the model uses or one per name; only for a conditional net.
        optimizer: Optimiser of the network, on two parameter groups (``weight_decay``; MaskGIT:
            Adam with betas (0.9, 0.96)).
        weight_decay: Weight decay of the weights of linear and convolution layers; biases, norms
            and embeddings get none (``token_models.decay_parameter_names``); it replaces the
            optimiser's own.
        warmup_steps: Linear LR warm-up over this many optimisation steps.
        lr_decay_steps: Cosine decay of the LR to ``min_lr`` at this step (``token_models.nanogpt_lr``);
            None = the trainer's ``max_steps`` when set, else no decay.
        min_lr: The LR at the end of the decay; None = a tenth of the optimiser's LR.
        compile: Train and evaluate through ``torch.compile(net)`` (the plain net samples).
        init_from: A lit_genai checkpoint whose ``net.*`` weights are loaded before training.
        seed: Base seed of ``predict``: sample i uses the generator seed + i (``paradigm.predict_step``).
        sampling: Inference-time settings (``MaskedSampling``); kept out of checkpoints.
        text_vocabulary: The words of the data's captions (linked from the data), which a text
            encoder without a tokenizer of its own reads; None: UTF-8 bytes. Kept in checkpoints, so
            captions are tokenized without the data.
    """

    ema_target = "net"
    sampling_settings = paradigm.sampling_settings
    predict_step = paradigm.predict_step

    def __init__(
        self,
        net: nn.Module,
        vocab_size: int = 1024,
        block_size: int = 256,
        num_classes: int = 0,
        vocabulary: Optional[list[str]] = None,
        modality: Literal["image", "text"] = "image",
        schedule: Schedule = "cosine",
        label_smoothing: float = 0.0,
        p_uncond: DropoutProbability = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        lr_decay_steps: Optional[int] = None,
        min_lr: Optional[float] = None,
        compile: bool = False,
        init_from: Optional[str] = None,
        seed: int = 0,
        sampling: MaskedSampling = MaskedSampling(),
        text_vocabulary: Optional[list[str]] = None,
    ) -> None:
        super().__init__()
        save_plain_hyperparameters(self, objects=("net", "optimizer"))
        self.net = net
        self.modality = modality
        self.vocab_size, self.block_size, self.mask_id = vocab_size, block_size, vocab_size
        self.num_classes = getattr(net, "num_classes", num_classes)  # the classes the model uses
        self.vocabulary = list(vocabulary) if vocabulary is not None else None
        self.optimizer = optimizer
        self.sampling = sampling
        self.conditions = paradigm.conditions_of(self.num_classes)
        encoder = text_encoder_of(net)
        self.text: Optional[TextCondition] = None
        if encoder is not None:
            self.text = TextCondition(encoder, text_vocabulary, "model.net")
            self.conditions = (*self.conditions, "text")
            caption = sampling.caption
            if caption:  # a word the encoder does not know: one line now, before predict clears its folder
                self.text.tokenize(
                    [caption] if isinstance(caption, str) else list(caption), torch.device("cpu")
                )
        self._dropout = condition_dropout(p_uncond, self.conditions, "model")
        self._check(net)
        self._eval_total: Optional[Tensor] = None  # (3,): summed NLL, correct, masked tokens
        # torch.compile(net), kept outside the module tree (TokenTraining._training_net)
        self.__dict__["_compiled"] = None

    def _check(self, net: nn.Module) -> None:
        """One ConfigError line for a net or setting that does not fit masked-token modelling."""
        paradigm.check_net(net, "model.net", num_classes=self.hparams.num_classes)
        net_vocab = getattr(net, "vocab_size", None)
        if net_vocab is not None and net_vocab != self.vocab_size + 1:
            raise ConfigError(
                f"model.net.vocab_size={net_vocab} but masked tokens need the data's {self.vocab_size} ids "
                f"+ 1 for [MASK]: set {_NET}.vocab_size: {self.vocab_size + 1}"
            )
        if getattr(net, "causal", False):
            raise ConfigError(
                f"model.net is causal but masked tokens attend both ways: set {_NET}.causal: false"
            )
        context = getattr(net, "block_size", None)
        if context is not None and context < self.block_size:
            raise ConfigError(
                f"model.net.block_size={context} is shorter than the data's sequences of {self.block_size} "
                f"tokens: set {_NET}.block_size: {self.block_size}"
            )
        if self.vocabulary is not None and len(self.vocabulary) != self.vocab_size:
            raise ConfigError(
                f"model.vocabulary has {len(self.vocabulary)} symbols but vocab_size={self.vocab_size}: "
                "remove model.init_args.vocabulary, the command line links it from the data"
            )
        if not self.sampling.hole:
            raise ConfigError(
                "model.sampling.hole is empty: give the character marking a position to fill, e.g. '_'"
            )

    # ------------------------------------------------------------------ training and evaluation

    def forward(
        self, idx: Tensor, cond: Optional[Tensor] = None, context: Optional[TextContext] = None
    ) -> Tensor:
        """(B, N) token ids with [MASK]s, (B,) labels, the captions' context -> logits (B, N, V) of
        the data's tokens."""
        return self._logits(self._training_net(), idx, cond, context)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        tokens, c, captions = self._unpack(batch)  # (B, N), (B,) or None, B strings or None
        B, N = tokens.shape
        trainer = self._trainer  # None outside a Trainer
        c = drop_labels(c, self._dropout, self.num_classes, trainer)  # classifier-free guidance
        context = self._context(captions, tokens.device, train=True)  # captions dropped likewise
        r = paradigm.this_rank(lambda n: torch.rand(n, device=tokens.device), B, trainer)  # (B,)
        scores = paradigm.this_rank(lambda n: torch.rand((n, N), device=tokens.device), B, trainer)
        masked = random_masks(num_to_mask(r, N, self.hparams.schedule), scores)  # (B, N)
        logits = self(torch.where(masked, self.mask_id, tokens), c, context)  # (B, N, V)
        loss = F.cross_entropy(
            logits[masked].float(), tokens[masked], label_smoothing=self.hparams.label_smoothing
        )  # mean over the masked tokens of the batch
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._accumulate(batch, batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._accumulate(batch, batch_idx)

    def on_validation_epoch_start(self) -> None:
        self._eval_total = None

    def on_test_epoch_start(self) -> None:
        self._eval_total = None

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def eval_masks(self, tokens: Tensor, batch_idx: int) -> Tensor:
        """The (B, N) bool masks of evaluation batch ``batch_idx``: the training distribution, drawn on
        the CPU from ``paradigm.evaluation_generator`` (seed ``EVAL_SEED``), so each validation scores
        the same positions, and each rank its own."""
        B, N = tokens.shape
        g = paradigm.evaluation_generator(self._trainer, batch_idx, EVAL_SEED)
        r, scores = torch.rand(B, generator=g), torch.rand((B, N), generator=g)
        return random_masks(num_to_mask(r, N, self.hparams.schedule), scores).to(tokens.device)

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        cond: Cond = None,
        generator: paradigm.Generators = None,
        progress: bool = False,
        **options: Any,
    ) -> Tensor:
        """Draw ``n`` sequences of ``block_size`` token ids (n, N) by MaskGIT decoding.

        ``cond``: ``{"label": (n,)}`` (or the bare labels) of a class-conditional model (None: the
        null label, without guidance); ``{"text": n captions}`` of a text-conditional one (none:
        the ``caption`` setting, else the empty caption). ``options``: ``MaskedSampling`` fields,
        defaulting to ``self.sampling`` (``prompt``: text with holes or token ids; its known tokens
        stay where they are). The same ``generator`` seed gives the same sequences; it may also be one
        generator per sample (``paradigm.sample_generators``).
        """
        settings = self.sampling.replace(**options)
        start = torch.full((self.block_size,), self.mask_id, dtype=torch.long)
        given = self.encode_prompt(settings.prompt, settings.hole)  # (N0,)
        start[: given.numel()] = given
        tokens = start.to(self.device).expand(n, -1).contiguous()  # (n, N)
        inpainting = self._inpainting_start(n, cond, settings)
        if inpainting is not None:  # image inpainting: the source's known tokens, [MASK] elsewhere
            tokens = inpainting
        with paradigm.eval_mode(self.net):
            condition, null, guidance = self._sampling_conditions(n, cond, settings)
            return maskgit_decode(
                lambda idx, c: self._logits(self.net, idx, *(c or (None, None))),
                tokens,
                mask_id=self.mask_id,
                steps=settings.steps,
                schedule=self.hparams.schedule,
                choice_temperature=settings.choice_temperature,
                temperature=settings.temperature,
                top_k=settings.top_k,
                guidance=guidance,
                cond=condition,
                null_cond=null,
                generator=generator,
                progress=progress,
            )  # (n, N)

    def sources(self, indices: Sequence[int], **options: Any) -> Optional[dict[str, Tensor]]:
        """The ``image`` (and ``mask``) conditions ``predict`` gives its sample indices: file i % len
        of the ``init_image`` and ``mask`` settings (``options`` override them), or None
        (docs/architecture.md, "Generative modules")."""
        return self._setting_sources(self.sampling.replace(**options), indices) or None

    def _setting_sources(self, settings: MaskedSampling, indices: Sequence[int]) -> dict[str, Tensor]:
        return setting_sources(settings.init_image, settings.mask, indices, lambda: self._tokenizer(settings))

    def _tokenizer(self, settings: MaskedSampling) -> Any:
        """The frozen VQ-VAE of the ``tokenizer`` setting, read once (not a submodule: not saved)."""
        cached = self.__dict__.get("_vq_tokenizer")
        if cached is None or cached[0] != settings.tokenizer:
            cached = (settings.tokenizer, load_tokenizer(settings.tokenizer))
            self.__dict__["_vq_tokenizer"] = cached
        return cached[1]

    def _inpainting_start(self, n: int, cond: Cond, settings: MaskedSampling) -> Optional[Tensor]:
        """``cond``'s ``image`` and ``mask`` (else the settings' files) -> the start (n, N), or None
        without a source (``masked/inpainting.py``)."""
        owner = f"{type(self).__name__}.sample()"
        named = as_conditions(cond, (*self.conditions, "image", "mask"), owner)
        if "image" not in named:
            named = {**self._setting_sources(settings, range(n)), **named}
        return inpainting_start(
            named.get("image"),
            named.get("mask"),
            n,
            self.block_size,
            self.mask_id,
            lambda: self._tokenizer(settings),
            self.device,
            owner,
        )

    def encode_prompt(self, prompt: Prompt, hole: Optional[str] = None) -> Tensor:
        """A prompt as (N0,) int64 ids with the [MASK] id at its holes (N0 <= block_size).

        Text goes through the vocabulary, each ``hole`` character becoming a [MASK]; without a
        vocabulary, text is token ids separated by spaces or commas, ``hole`` for a hole. Token ids
        are kept, the [MASK] id and negative ids being holes. None or "" gives no tokens. ``hole``
        defaults to ``self.sampling.hole``.
        """
        hole = self.sampling.hole if hole is None else hole
        if prompt is None or (isinstance(prompt, str) and not prompt):
            return torch.zeros(0, dtype=torch.long)
        if isinstance(prompt, str):
            ids = self._text_ids(prompt, hole)
        else:
            flat = prompt.detach().flatten().tolist() if isinstance(prompt, Tensor) else list(prompt)
            ids = [self.mask_id if int(t) < 0 else int(t) for t in flat]
        bad = [t for t in ids if not 0 <= t <= self.mask_id]
        if bad:
            raise ConfigError(
                f"model.sampling.prompt has token id {bad[0]}, outside the data's ids "
                f"0..{self.vocab_size - 1} (and {self.mask_id} or {hole!r} for a hole)"
            )
        if len(ids) > self.block_size:
            raise ConfigError(
                f"model.sampling.prompt has {len(ids)} tokens, more than block_size={self.block_size}: "
                "shorten it"
            )
        return torch.tensor(ids, dtype=torch.long)

    def prompts(self, indices: Sequence[int]) -> Optional[list[str]]:
        """The caption of each sample index that ``predict`` draws (the ``caption`` setting, cycled;
        ``paradigm.predict_step``), or None (a model without text, or no caption set)."""
        return prompts_for(self.sampling.caption, indices) if self.text is not None else None

    # ------------------------------------------------------------------ helpers

    def _context(
        self, captions: Optional[Sequence[str]], device: torch.device, train: bool
    ) -> Optional[TextContext]:
        """A batch's captions -> their ``TextContext`` (None for a model without text); in training,
        each caption becomes the empty one with ``p_uncond``'s probability for ``text``."""
        if self.text is None:
            return None
        if captions is None:
            raise ConfigError(
                "the model is text-conditional but its batches carry no captions: use captioned data "
                "(batches (tokens, y, captions), e.g. data.tokens.ImageTokens over CaptionedShapes), "
                "or a network without a text_encoder"
            )
        ids, mask = self.text.tokenize(captions, device)  # (B, L) each
        if train:
            ids, mask = self.text.drop(ids, mask, self._dropout, self._trainer)
        return self.text.encode(ids, mask)

    def _sampling_conditions(self, n: int, cond: Cond, settings: MaskedSampling) -> tuple[Any, Any, float]:
        """``sample()``'s ``cond`` -> (the condition of ``maskgit_decode``: (labels (n,) or None, text
        context or None), or None for an unconditional model; its null, the null labels and the
        empty captions; the guidance weight, 0 when only null conditions are asked for)."""
        named = as_conditions(cond, (*self.conditions, "image", "mask"), f"{type(self).__name__}.sample()")
        labels, null_labels, conditioned = named.get("label"), None, False
        if self.num_classes > 0:
            conditioned = labels is not None
            if labels is None:  # unconditional samples: the null label
                labels = torch.full((n,), self.num_classes)
            labels = labels.to(self.device, torch.long)
            null_labels = torch.full_like(labels, self.num_classes)
        else:
            labels = None
        context = self._sampling_context(n, named.get("text"), settings.caption)
        if labels is None and context is None:
            return None, None, settings.guidance  # maskgit_decode refuses guidance then
        if not (conditioned or bool(context is not None and context.mask.any())):
            return (labels, context), None, 0.0  # null conditions only: guidance is void
        null_context = None
        if context is not None and settings.guidance != 0:
            null_context = self.text.null(n, self.device)  # the empty captions
        return (labels, context), (null_labels, null_context), settings.guidance

    def _sampling_context(
        self, n: int, text: Any, caption: Union[str, list[str], None]
    ) -> Optional[TextContext]:
        """``sample()``'s captions (or the ``caption`` setting, sample j taking caption j % len; none:
        the empty caption) -> their context; None for a model without text."""
        if self.text is None:
            if caption:
                raise ConfigError(
                    "model.sampling.caption needs a text-conditional model (a network with a text_encoder)"
                )
            return None
        if text is None:
            text = prompts_for(caption, range(n)) or [""] * n
        if len(text) != n:
            raise ConfigError(f"{type(self).__name__}.sample(): {len(text)} captions for {n} samples")
        return self.text.encode(*self.text.tokenize(text, self.device))

    def _text_ids(self, prompt: str, hole: str) -> list[int]:
        """Text with ``hole`` characters -> ids, a [MASK] at each hole."""
        if self.vocabulary is None:
            words = [w for w in re.split(r"[\s,]+", prompt.strip()) if w]
            if not all(w == hole or w.isdigit() for w in words):
                raise ConfigError(
                    "model.sampling.prompt: a text prompt needs the vocabulary (model.vocabulary, "
                    f"linked from character-level data); without one give token ids and {hole!r} for holes, "
                    f"e.g. '0 5 {hole} 7'"
                )
            return [self.mask_id if w == hole else int(w) for w in words]
        ids: list[int] = []
        for i, piece in enumerate(prompt.split(hole)):
            if i > 0:
                ids.append(self.mask_id)
            ids.extend(self._encode_text(piece) if piece else [])
        return ids

    def _logits(
        self, net: nn.Module, idx: Tensor, cond: Optional[Tensor], context: Optional[TextContext] = None
    ) -> Tensor:
        """The logits of the data's V tokens; the net's last output, [MASK], is sliced off."""
        args = (idx, cond) if self.num_classes > 0 else (idx,)
        out = net(*args, context=context) if self.text is not None else net(*args)  # (B, N, V + 1)
        return out[..., : self.vocab_size]

    def _unpack(self, batch: Any) -> tuple[Tensor, Optional[Tensor], Optional[Sequence[str]]]:
        """A plain (B, N) tensor, (tokens (B, N), labels (B,)), captioned tokens for a text model
        (tokens, labels or attributes (B, A), B captions or their (B, L) ids) or text (x, y[, c])
        -> tokens, labels (None when unlabelled or the net is unconditional), captions (None
        without)."""
        if isinstance(batch, Tensor):
            return batch, None, None
        captions = None
        if self.text is not None and len(batch) > 2:  # captions: strings or (B, L) caption ids
            tokens, c, captions = batch[0], batch[1] if batch[1].dim() == 1 else None, batch[2]
        elif batch[1].dim() == 1:  # a sequence batch (docs/architecture.md, "Batches")
            tokens, c = batch[0], batch[1]
        else:  # text pairs: x is the sequence, y (x shifted) is not needed
            tokens, c = batch[0], batch[2] if len(batch) > 2 else None
        return tokens, c if self.num_classes > 0 else None, captions

    def _accumulate(self, batch: Any, batch_idx: int) -> None:
        tokens, c, captions = self._unpack(batch)
        masked = self.eval_masks(tokens, batch_idx)  # (B, N)
        context = self._context(captions, tokens.device, train=False)
        logits = self(torch.where(masked, self.mask_id, tokens), c, context)[masked].float()  # (M, V)
        target = tokens[masked]
        nll = F.cross_entropy(logits, target, reduction="sum")
        correct = (logits.argmax(-1) == target).sum().to(nll)
        total = torch.stack([nll, correct, torch.tensor(float(target.numel()), device=nll.device)])
        self._eval_total = total if self._eval_total is None else self._eval_total + total

    def _log_eval(self, stage: str) -> None:
        """``<stage>/loss`` and ``<stage>/acc`` over every masked token of the split (all ranks)."""
        if self._eval_total is None:
            return
        nll, correct, count = self.trainer.strategy.reduce(self._eval_total, reduce_op="sum")
        self._eval_total = None
        self.log(f"{stage}/loss", nll / count, prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/acc", correct / count, sync_dist=True)
