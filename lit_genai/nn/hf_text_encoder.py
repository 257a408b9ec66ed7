"""A frozen Hugging Face CLIP or T5 text encoder, read from a local folder, as a text encoder.

Papers: Rombach et al. 2022 (Stable Diffusion: the text tower of CLIP ViT-L/14, Radford et al.
2021, its last hidden state as the cross-attention context; SD 2 takes OpenCLIP's penultimate
layer), Saharia et al. 2022 (Imagen: a frozen T5-XXL encoder, Raffel et al. 2020, whose hidden
states with a padding mask are the context; a pooled text vector joins the time embedding).

``HFTextEncoder`` keeps the interface of ``lit_genai.nn.text_encoder.TextEncoder``: ``width``,
``max_length``, ``vocab_size``, ``frozen`` and ``forward(ids, mask) -> TextContext``, plus its own
``tokenize`` through the folder's tokenizer. The folder is read with ``local_files_only=True``: no
download, ever. It is a model folder (``config.json`` + weights + tokenizer files) or a diffusers
pipeline folder, whose ``text_encoder/`` and ``tokenizer/`` are used.

What the context holds:
- tokens: the last hidden state (CLIP after its final layer norm, T5 after its own), or with
  ``layer: penultimate`` the second-to-last block's output through that same final norm (SD 2's
  ``FrozenOpenCLIPEmbedder``; diffusers' ``clip_skip=1``); 0 at padding. Stable Diffusion 1.x hands
  all 77 positions (EOS padding included) to its UNet unmasked; here padding is masked, as Imagen does.
- pooled: CLIP's pooled output (the last layer's vector at the EOS token, whatever ``layer``);
  for T5, which has none, the mean of the real tokens' vectors.
- The empty caption ``""`` (or only spaces) is a row with an all-False mask, although the tokenizer
  would give it BOS/EOS tokens: it is "no context" (tokens 0, pooled 0), the null caption of
  classifier-free guidance, as for the small ``TextEncoder``.

The encoder is always frozen: no gradient, no optimiser, eval mode whatever ``train()`` says. Its
weights are part of the network's ``state_dict``, so a checkpoint of a model with a frozen Hugging
Face encoder holds the encoder's weights (as a diffusers pipeline keeps ``text_encoder/`` beside
``unet/``); the tokenizer is not in it, and rebuilding the model from its checkpoint reads the
folder again. ``transformers`` (``pip install 'lit_genai[hf]'``) is imported when an encoder is
made, not when this file is, so ``lit_genai.nn`` stays light; YAML names the class in full:
``text_encoder: {class_path: lit_genai.nn.hf_text_encoder.HFTextEncoder, init_args: {path: …}}``.

Shape legend: B captions, L = max_length tokens, D = width (the model's hidden size).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from torch import Tensor, nn

from lit_genai.errors import ConfigError
from lit_genai.nn.cross_attention import TextContext

# The model_type of config.json -> kind: a CLIP text tower (SD's text_encoder/ folder), a whole
# CLIP model (its text tower is read: CLIPTextModel takes the text half of a CLIPConfig), a T5.
KINDS = {"clip_text_model": "clip", "clip": "clip", "t5": "t5"}
MODEL_CLASSES = {"clip": "CLIPTextModel", "t5": "T5EncoderModel"}
WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
DEFAULT_MAX_LENGTH = 77  # CLIP's context length, what Stable Diffusion tokenizes to
INSTALL = "pip install 'lit_genai[hf]'"


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"HFTextEncoder needs the transformers package: {INSTALL}") from None
    return transformers


def _folders(path: str) -> tuple[Path, Path]:
    """(the model's folder, the tokenizer's folder) of a model folder or a diffusers pipeline folder."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"HFTextEncoder: path {path} is not a folder; give a local Hugging Face CLIP or T5 text encoder "
            "folder (config.json, weights, tokenizer files), e.g. one saved by save_pretrained"
        )
    model = root / "text_encoder" if (root / "text_encoder" / "config.json").is_file() else root
    tokenizer = root / "tokenizer" if (root / "tokenizer").is_dir() else root
    if not (model / "config.json").is_file():
        raise ConfigError(f"HFTextEncoder: {path} has no config.json; it is not a Hugging Face model folder")
    if not any((model / name).is_file() for name in WEIGHTS):
        raise ConfigError(
            f"HFTextEncoder: {model} has a config.json but no weights ({' or '.join(WEIGHTS[::2])}); "
            "copy the model's weight files there"
        )
    return model, tokenizer


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class HFTextEncoder(nn.Module):
    """A frozen ``CLIPTextModel`` or ``T5EncoderModel`` from a local folder -> ``TextContext``
    (module docstring).

    Args:
        path: a local folder holding the encoder (``config.json`` and weights) and its tokenizer, or
            a diffusers pipeline folder (its ``text_encoder/`` and ``tokenizer/``).
        kind: ``clip`` or ``t5``; ``auto`` reads it from config.json's ``model_type``.
        max_length: tokens per caption (L), longer captions are truncated; None: the tokenizer's
            ``model_max_length``, at most 77 (CLIP's and Stable Diffusion's).
        layer: ``last`` hidden state, or ``penultimate`` (the second-to-last block, as SD 2).
    """

    frozen = True  # always: a Hugging Face encoder is only read, never trained here

    def __init__(
        self,
        path: str,
        kind: Literal["auto", "clip", "t5"] = "auto",
        max_length: Optional[int] = None,
        layer: Literal["last", "penultimate"] = "last",
    ) -> None:
        super().__init__()
        transformers = _import_transformers()
        model_folder, tokenizer_folder = _folders(path)
        try:
            config = transformers.AutoConfig.from_pretrained(model_folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as error:
            raise ConfigError(
                f"HFTextEncoder: cannot read {model_folder}/config.json: {_first_line(error)}"
            ) from None
        found = KINDS.get(config.model_type)
        if found is None or kind not in ("auto", found):
            raise ConfigError(
                f"HFTextEncoder: {path} holds a {config.model_type!r} model, not a "
                f"{'CLIP or T5' if kind == 'auto' else kind.upper()} text encoder; "
                f"give kind: {found or 'auto'} or a folder of a CLIP or T5 model"
            )
        try:
            model_class = getattr(transformers, MODEL_CLASSES[found])
            model = model_class.from_pretrained(model_folder, local_files_only=True)
            tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_folder, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"HFTextEncoder: cannot load {path}: {_first_line(error)}") from None
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ConfigError(
                    f"HFTextEncoder: the tokenizer of {path} has neither a pad nor an EOS token"
                )
            tokenizer.pad_token = tokenizer.eos_token  # as SD 1.x's CLIP tokenizer pads (with EOS)
        limit = getattr(config, "max_position_embeddings", None)  # CLIP's learned positions; T5 has none
        if max_length is None:
            max_length = min(tokenizer.model_max_length, DEFAULT_MAX_LENGTH, limit or DEFAULT_MAX_LENGTH)
        if max_length < 2 or (limit is not None and max_length > limit):
            most = f"at most {limit} (the positions of the model in {path})" if limit else "any"
            raise ConfigError(f"HFTextEncoder: max_length={max_length} must be at least 2 and {most}")
        # Float32 whatever the folder stores (fp16 halves of SD's text encoder): the trainer's
        # precision setting, not the file, decides the compute dtype.
        self.model = model.float().requires_grad_(False).eval()
        self._tokenizer = tokenizer  # a plain attribute: not a Module, so not in the state_dict
        self.kind, self.layer = found, layer
        self.width = model.config.hidden_size  # D (T5's d_model under its transformers alias)
        self.max_length, self.vocab_size = max_length, model.config.vocab_size

    def train(self, mode: bool = True) -> HFTextEncoder:
        return super().train(False)  # frozen: dropout stays off whatever the trainer asks

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """B captions -> (ids (B, L) int64, mask (B, L) bool) on the CPU, truncated to L tokens.

        An empty caption is all padding (no BOS/EOS). Padding holds id 0, the project's padding id
        (``text_condition``), not the tokenizer's pad id (CLIP pads with EOS): the model never reads
        it (masked), and CLIP's pooled EOS is found at the real EOS all the same. Pass the mask on
        rather than recompute it as ``ids != 0``: CLIP's id 0 is also a real token ("!").
        """
        texts = [str(text) for text in texts]
        batch = self._tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        ids, mask = batch["input_ids"].long(), batch["attention_mask"].bool()  # (B, L) each
        mask[[not text.strip() for text in texts]] = False  # the empty caption: no token at all
        return ids.masked_fill(~mask, 0), mask

    @torch.no_grad()
    def forward(self, ids: Tensor, mask: Optional[Tensor] = None) -> TextContext:
        """ids (B, L) int64, mask (B, L) bool (None: ids != 0) -> TextContext."""
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(f"HFTextEncoder: ids must be (B, L) int64, got {ids.dtype} {tuple(ids.shape)}")
        mask = ids != 0 if mask is None else mask.bool()
        valid = mask.any(dim=1)  # (B,): rows with a token; the others attend to all (no softmax over nothing)
        out = self.model(
            input_ids=ids, attention_mask=(mask | ~valid[:, None]).long(), output_hidden_states=True
        )
        h = out.last_hidden_state  # (B, L, D)
        if self.layer == "penultimate":
            # hidden_states = (embeddings, block 1, ..., block n), block n's maybe already normed (T5)
            norm = self.model.final_layer_norm if self.kind == "clip" else self.model.encoder.final_layer_norm
            h = norm(out.hidden_states[-2])  # (B, L, D)
        h = torch.where(mask[..., None], h, 0.0)  # (B, L, D): 0 at padding (where: a NaN row stays out)
        if self.kind == "clip":
            pooled = out.pooler_output  # (B, D): the last layer at the EOS token
        else:
            pooled = h.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, D): mean of the real tokens
        pooled = torch.where(valid[:, None], pooled, 0.0)  # (B, D): 0 for the empty caption
        return TextContext(h, mask, pooled)
