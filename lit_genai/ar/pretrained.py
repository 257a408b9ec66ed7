"""GPT-2 weights from a local Hugging Face folder into ``lit_genai.nn.transformer.GPT``.

Radford et al. 2019 released GPT-2 as TensorFlow checkpoints; Hugging Face ``transformers`` keeps
them as ``GPT2LMHeadModel`` folders (``config.json`` + ``model.safetensors`` or
``pytorch_model.bin``, as ``save_pretrained`` writes them). The layout is the one ``GPT`` follows
(pre-LayerNorm blocks, tied output layer, learned positions), with biases everywhere and the tanh
approximation of GELU, so ``load_gpt2`` builds ``GPT(bias=True, activation="gelu_tanh")`` and copies
the tensors by name. The attention and MLP projections of the checkpoints are ``Conv1D`` layers
that store their weight as (in, out), the transpose of ``nn.Linear``'s (out, in): those four
weights are transposed (as nanoGPT's ``GPT.from_pretrained`` does).

Only files are read (no ``transformers`` import, no download): the weights with ``safetensors``
(an optional dependency) or ``torch.load(weights_only=True)``. Every unusable folder is one
``ConfigError`` line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor

from lit_genai.errors import ConfigError
from lit_genai.nn.transformer import GPT

# Conv1D weights, stored (in, out): transposed into nn.Linear's (out, in)
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# buffers of older checkpoints (the causal mask), not weights
_BUFFERS = (".attn.bias", ".attn.masked_bias")
_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def _config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(
            f"{folder} has no config.json: give the folder GPT2LMHeadModel.save_pretrained wrote"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is not readable JSON ({err}): save the model again") from None
    if config.get("model_type") != "gpt2":
        raise ConfigError(
            f"{path} has model_type={config.get('model_type')!r}; only 'gpt2' folders load into GPT"
        )
    unsupported = {
        "activation_function": config.get("activation_function", "gelu_new") not in _ACTIVATIONS,
        "n_inner": config.get("n_inner") not in (None, 4 * config["n_embd"]),
        "layer_norm_epsilon": abs(config.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12,
        "scale_attn_weights": not config.get("scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": config.get("scale_attn_by_inverse_layer_idx", False),
        "add_cross_attention": config.get("add_cross_attention", False),
    }
    if bad := [key for key, wrong in unsupported.items() if wrong]:
        raise ConfigError(
            f"{path}: GPT does not support {', '.join(f'{k}={config.get(k)!r}' for k in bad)} "
            f"(it has GELU, 4x MLPs, LayerNorm eps 1e-5, 1/sqrt(hs) attention scaling and no cross-attention)"
        )
    return config


def _weights(folder: Path) -> dict[str, Tensor]:
    safe, binary = folder / "model.safetensors", folder / "pytorch_model.bin"
    if safe.is_file():
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError(
                f"{safe} needs the safetensors package: pip install safetensors (or save a pytorch_model.bin)"
            ) from None
        return load_file(str(safe))
    if binary.is_file():
        return torch.load(binary, map_location="cpu", weights_only=True)
    raise ConfigError(
        f"{folder} has neither model.safetensors nor pytorch_model.bin (sharded checkpoints: not supported)"
    )


def load_gpt2(folder: Union[str, Path], *, block_size: Optional[int] = None, dropout: float = 0.0) -> GPT:
    """A ``GPT`` with the weights of a local Hugging Face GPT-2 folder (module docstring).

    Args:
        folder: a directory with ``config.json`` and ``model.safetensors`` / ``pytorch_model.bin``
            (``GPT2LMHeadModel`` or ``GPT2Model``, as ``save_pretrained`` writes them).
        block_size: keep only the first ``block_size`` position embeddings (a shorter context;
            default: the checkpoint's ``n_positions``).
        dropout: dropout of the returned network (the checkpoints do not fix it).

    Returns:
        the network, in eval mode, on the CPU, in float32.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a directory: give a folder GPT2LMHeadModel.save_pretrained wrote")
    config = _config(folder)
    n_positions = int(config.get("n_positions", 1024))
    block_size = n_positions if block_size is None else block_size
    if not 1 <= block_size <= n_positions:
        raise ConfigError(
            f"block_size={block_size} must be in [1, {n_positions}] (the checkpoint's n_positions)"
        )
    net = GPT(
        vocab_size=int(config["vocab_size"]),
        block_size=block_size,
        n_layer=int(config["n_layer"]),
        n_head=int(config["n_head"]),
        n_embd=int(config["n_embd"]),
        dropout=dropout,
        bias=True,
        activation=_ACTIVATIONS[config.get("activation_function", "gelu_new")],
    )
    source = {}
    for key, value in _weights(folder).items():
        if key.endswith(_BUFFERS):
            continue
        if not key.startswith(("transformer.", "lm_head.")):
            key = "transformer." + key  # a GPT2Model folder: no "transformer." prefix
        source[key] = value
    wte = source.get("transformer.wte.weight")
    source.setdefault("lm_head.weight", wte)  # tied: often saved once
    if wte is not None and not torch.equal(source["lm_head.weight"], wte):
        raise ConfigError(
            f"{folder}: lm_head.weight differs from wte.weight; GPT ties them (tie_word_embeddings)"
        )
    target = net.state_dict()
    if missing := sorted(set(target) - set(source)):
        raise ConfigError(f"{folder}: the checkpoint lacks {len(missing)} GPT-2 tensors, e.g. {missing[0]}")
    if extra := sorted(set(source) - set(target)):
        raise ConfigError(f"{folder}: the checkpoint has tensors GPT-2 does not, e.g. {extra[0]}")
    with torch.no_grad():
        for key, param in target.items():
            value = source[key].float()
            if key.endswith(_CONV1D):
                value = value.t()
            if key == "transformer.wpe.weight":
                value = value[:block_size]
            if value.shape != param.shape:
                raise ConfigError(
                    f"{folder}: {key} has shape {tuple(value.shape)}, config.json says {tuple(param.shape)}"
                )
            param.copy_(value)
    return net.eval()


class PretrainedGPT2(GPT):
    """``load_gpt2`` as a network class, so a YAML can start from GPT-2's weights:
    ``net: {class_path: lit_genai.ar.pretrained.PretrainedGPT2, init_args: {folder: gpt2/}}``
    (with GPT-2 BPE data, ``tokenizer: gpt2``, whose vocabulary it shares).

    The sizes come from the folder's ``config.json``; a checkpoint of a run that started here
    rebuilds the network from the same folder, then loads its own (fine-tuned) weights over it.

    Args:
        folder: a local Hugging Face GPT-2 folder (``save_pretrained``'s output).
        block_size: keep only the first ``block_size`` position embeddings (default: all).
        dropout: dropout while fine-tuning.
    """

    def __init__(self, folder: str, block_size: Optional[int] = None, dropout: float = 0.0) -> None:
        loaded = load_gpt2(folder, block_size=block_size, dropout=dropout)
        activation = _ACTIVATIONS[_config(Path(folder)).get("activation_function", "gelu_new")]
        super().__init__(
            vocab_size=loaded.vocab_size,
            block_size=loaded.block_size,
            n_layer=loaded.n_layer,
            n_head=loaded.n_head,
            n_embd=loaded.n_embd,
            dropout=dropout,
            bias=True,
            activation=activation,
        )
        self.load_state_dict(loaded.state_dict())
        self.folder, self.dropout = folder, dropout
