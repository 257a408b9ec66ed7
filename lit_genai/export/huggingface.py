"""A trained GPT (``NextToken`` with ``nn.transformer.GPT``) as a transformers ``GPT2LMHeadModel`` folder.

The reverse of ``lit_genai.ar.pretrained.load_gpt2``. Our GPT follows GPT-2's layout (Radford et al.
2019, sec. 2.3: pre-LayerNorm blocks, learned positions, the output layer tied to the token
embedding), so a ``GPT2LMHeadModel`` holds it exactly:

====================================  ===========================================================
``GPT2Config``                        from ``GPT``
====================================  ===========================================================
``vocab_size``, ``n_positions``       ``vocab_size``, ``block_size``
``n_embd``, ``n_layer``, ``n_head``   the same; ``n_inner`` None (4 ``n_embd``, our MLP)
``activation_function``               ``gelu`` (exact) or ``gelu_new`` (``gelu_tanh``)
``layer_norm_epsilon``                1e-5; ``tie_word_embeddings`` True
``*_pdrop``                           ``dropout``
====================================  ===========================================================

GPT-2's attention and MLP projections are ``Conv1D`` layers storing (in, out) weights, the transpose
of ``nn.Linear``'s: those four are transposed. A GPT with ``bias: false`` gets zero biases (GPT-2 has
them everywhere; adding zeros changes nothing). Refused, one ``ConfigError`` line each: rotary
positions (``rope``), class conditioning, bidirectional attention (``causal: false``), any other
activation or network.

The tokens: a character-level text model (``tokenizer: char``) gets a tokenizer the transformers
``AutoTokenizer`` loads (``tokenizer.json``: one token per character of ``vocabulary``, decoded by
joining them) and ``vocabulary.json`` (the list of characters, id i at index i); a byte-level one
(``tokenizer: byte``) a tokenizer of the 256 UTF-8 bytes; GPT-2 BPE (``tokenizer: gpt2``) uses GPT-2's
own tokenizer (``AutoTokenizer.from_pretrained("openai-community/gpt2")``). Tokens of audio or
image data are decoded by lit_genai only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from lit_genai.errors import ConfigError
from lit_genai.nn.lora import lora_layers, merged_copy
from lit_genai.nn.transformer import GPT

# Conv1D weights of GPT-2, stored (in, out): the transpose of our nn.Linear's (out, in)
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
ACTIVATIONS = {"none": "gelu", "tanh": "gelu_new"}  # nn.GELU(approximate=...) -> transformers' name
GPT2_EOS = 50256  # <|endoftext|> of GPT-2's BPE


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "--format transformers needs the transformers package: pip install 'lit_genai[interop]'"
        ) from None
    return transformers


def check_exportable(module: LightningModule) -> GPT:
    """The module's GPT, or one ``ConfigError`` line saying why a ``GPT2LMHeadModel`` cannot hold it."""
    from lit_genai.ar import NextToken

    net = getattr(module, "net", None)
    if not isinstance(module, NextToken) or not isinstance(net, GPT):
        raise ConfigError(
            f"--format transformers exports a NextToken model with a lit_genai.nn.transformer.GPT, not a "
            f"{type(module).__name__} with a {type(net).__name__}: use --format safetensors or onnx"
        )
    if net.rope:
        refused = "rope: true (rotary positions; GPT-2 has learned absolute positions only)"
    elif net.num_classes > 0:
        refused = f"num_classes: {net.num_classes} (a class embedding; GPT-2 has none)"
    elif not net.causal:
        refused = "causal: false (bidirectional attention; GPT-2 is causal)"
    elif not isinstance(net.transformer.h[0].mlp.act, torch.nn.GELU):
        refused = f"activation {type(net.transformer.h[0].mlp.act).__name__} (GPT-2: gelu or gelu_tanh)"
    else:  # LoRA adapters (lit_genai.nn.lora) folded into their weights: GPT-2's layers have none
        return merged_copy(net) if lora_layers(net) else net
    raise ConfigError(f"--format transformers: GPT2LMHeadModel cannot hold model.net with {refused}")


def gpt2_config(net: GPT, dropout: Optional[float] = None) -> dict[str, Any]:
    """The ``GPT2Config`` arguments of ``net``, read from its modules (any GPT, however built)."""
    dropout = net.transformer.drop.p if dropout is None else dropout
    vocab_size = net.vocab_size
    eos = GPT2_EOS if vocab_size == GPT2_EOS + 1 else None  # GPT-2's BPE: keep <|endoftext|>
    return dict(
        vocab_size=vocab_size,
        n_positions=net.block_size,
        n_embd=net.n_embd,
        n_layer=net.n_layer,
        n_head=net.n_head,
        n_inner=None,
        activation_function=ACTIVATIONS[net.transformer.h[0].mlp.act.approximate],
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        layer_norm_epsilon=net.transformer.ln_f.eps,
        tie_word_embeddings=True,
        bos_token_id=eos,
        eos_token_id=eos,
    )


def gpt2_state_dict(net: GPT) -> dict[str, Tensor]:
    """``net``'s weights under ``GPT2LMHeadModel``'s names: Conv1D weights transposed, missing biases
    (``bias: false``) as zeros, float32 on the CPU."""
    state = {k: v.detach().to("cpu", torch.float32) for k, v in net.state_dict().items()}
    for name, module in net.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)) and name != "lm_head":
            width = module.weight.shape[0]
            state.setdefault(f"{name}.bias", torch.zeros(width))  # GPT-2 has every bias
    return {k: v.t().contiguous() if k.endswith(_CONV1D) else v for k, v in state.items()}


def _tokenizer_kind(module: LightningModule) -> Optional[str]:
    """``char``, ``byte``, ``gpt2`` or None (not text): from the media decoder ``lit_genai.api.load``
    attaches, else from the module's vocabulary and size."""
    decoder = getattr(module, "media_decoder", None)
    if getattr(decoder, "tokenizer", None) is not None:
        return str(decoder.tokenizer)
    if getattr(module, "modality", "text") != "text":
        return None
    if module.vocabulary is not None:
        return "char"
    return {256: "byte", GPT2_EOS + 1: "gpt2"}.get(module.vocab_size)


def _save_tokenizer(transformers: Any, kind: Optional[str], module: LightningModule, output: Path) -> None:
    """Write the tokenizer files of a char- or byte-level text model (module docstring)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    if kind == "char":
        vocabulary = list(module.vocabulary)
        # BPE with no merges: every character of the vocabulary is a token (newlines and spaces too)
        tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(vocabulary)}, merges=[]))
        tokenizer.decoder = decoders.Fuse()  # decode by joining the characters
        (output / "vocabulary.json").write_text(json.dumps(vocabulary, ensure_ascii=False) + "\n")
    elif kind == "byte":
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        # GPT-2's byte-level alphabet with no merges: id b is byte b
        tokenizer = Tokenizer(models.BPE(vocab={c: b for b, c in bytes_to_unicode().items()}, merges=[]))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tokenizer.decoder = decoders.ByteLevel()
    else:
        return
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, clean_up_tokenization_spaces=False, model_max_length=module.net.block_size
    )
    fast.save_pretrained(output)


def export_transformers(module: LightningModule, output_dir: Union[str, Path]) -> Path:
    """Write ``module`` (a loaded ``NextToken`` with a GPT, EMA weights in) as a ``GPT2LMHeadModel``
    folder (module docstring).

    Args:
        module: a ``NextToken`` whose net is a causal, unconditional ``GPT`` without rotary positions.
        output_dir: the folder to write (created; files of the same names are replaced).

    Returns:
        ``output_dir``: ``config.json`` + ``model.safetensors`` + ``generation_config.json`` (from
        ``save_pretrained``), the tokenizer files of char- and byte-level text, and a ``README.md``.
    """
    net = check_exportable(module)
    transformers = _import_transformers()
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**gpt2_config(net)))
    model.load_state_dict(gpt2_state_dict(net), strict=True)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    kind = _tokenizer_kind(module)
    _save_tokenizer(transformers, kind, module, output)
    from lit_genai.export.hub import model_card  # the card of hub.save_pretrained, with this folder's use

    model_card(module, usage=_usage(kind, net.block_size)).save(output / "README.md")
    return output


def _usage(kind: Optional[str], block_size: int) -> str:
    """The README's how-to for this folder."""
    # GPT-2 does not slide its context as lit_genai's sampler does: prompt + new tokens <= n_positions
    window = f"prompt + new tokens <= {block_size} (n_positions: the context does not slide)"
    load = (
        "```python\nimport torch\nfrom transformers import AutoTokenizer, GPT2LMHeadModel\n\n"
        'model = GPT2LMHeadModel.from_pretrained("<this folder>")\n'
    )
    if kind in ("char", "byte"):
        return load + (
            'tokenizer = AutoTokenizer.from_pretrained("<this folder>")\n'
            'ids = tokenizer("\\n", return_tensors="pt").input_ids\n'
            f"out = model.generate(ids, do_sample=True, max_new_tokens={block_size - 1})  # {window}\n"
            "print(tokenizer.decode(out[0]))\n```\n\n"
            + (
                "`vocabulary.json` lists the characters: token id i is `vocabulary[i]`."
                if kind == "char"
                else "Token id b is the byte b of UTF-8 text."
            )
        )
    if kind == "gpt2":
        return load + (
            'tokenizer = AutoTokenizer.from_pretrained("openai-community/gpt2")  # GPT-2 BPE\n'
            'ids = tokenizer("Hello,", return_tensors="pt").input_ids  # 2 tokens\n'
            f"new = {min(50, block_size - 2)}  # {window}\n"
            "out = model.generate(ids, do_sample=True, max_new_tokens=new)\n"
            "print(tokenizer.decode(out[0]))\n```"
        )
    return load + (
        "logits = model(torch.tensor([[0, 1, 2]])).logits  # (B, T, V)\n```\n\n"
        "The token ids are lit_genai's codes of audio or image data: decode samples with lit_genai."
    )
