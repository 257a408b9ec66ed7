"""Exportable one-token decode steps of the autoregressive networks (``torch.export``).

A decode step is a module that owns its network's generation state as fixed-size buffers and maps
one token per row at a position given as a tensor to the next-token logits:

- GPT (``nn.transformer.GPT``): ``GPTDecodeStep``, a static key/value cache of (B, nh, block_size,
  hs) buffers per layer (as litgpt's ``KVCache`` and transformers' ``StaticCache``):
  ``step(idx (B, 1), input_pos (1,) or (B, 1), cond=(B,)) -> (B, V)``; positions < block_size.
- WaveNet (``nn.wavenet.WaveNet``): ``WaveNetDecodeStep``, one ring buffer of (B, R, (k - 1) d) per
  layer: ``step(idx (B, 1), input_pos (1,), cond=(B,), local=(B, C, F)) -> (B, V)``, any position,
  F free (dynamic) in the exported program.

``cond`` is there for class-conditional nets only and ``local`` for WaveNets with local
conditioning (a vocoder's log-mel frames of the whole clip). The steps write their buffers in place,
which ``torch.export`` records as buffer mutations: the module of ``torch.export.load(path).module()``
keeps the cache from call to call. The batch size B is fixed when exporting (the buffers' shape);
the prompt is fed one token per call from position 0, and position 0 starts a new sequence with no
reset (later positions are masked until written again). ``generate_with_step`` is that loop, with
the draws of ``lit_genai.ar.sampling.generate``.

Shape legend: B batch, V vocabulary (WaveNet: levels), T0 prompt tokens, N new tokens, C local
channels, F local frames; nh heads, hs head size, R residual channels, k taps, d dilation.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from lit_genai import paradigm
from lit_genai.ar.sampling import check_options, check_prompt, next_token
from lit_genai.errors import ConfigError
from lit_genai.nn.transformer import GPT, KVCache
from lit_genai.nn.wavenet import WaveNet


class GPTDecodeStep(nn.Module):
    """A causal ``GPT`` with its static key/value cache for ``batch_size`` sequences.

    Args:
        net: the network (causal).
        batch_size: rows B of every call.
    """

    def __init__(self, net: GPT, batch_size: int) -> None:
        super().__init__()
        if not net.causal:
            raise ConfigError(
                "GPT decode step: the net is bidirectional (causal=False); only causal nets decode"
            )
        self.net, self.n_layer = net, net.n_layer
        cache = net.init_cache(batch_size)
        for i, (keys, values) in enumerate(zip(cache.keys, cache.values, strict=True)):
            self.register_buffer(f"keys_{i}", keys, persistent=False)  # (B, nh, block_size, hs)
            self.register_buffer(f"values_{i}", values, persistent=False)

    def forward(self, idx: Tensor, input_pos: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """idx (B, 1) at positions input_pos (1,) or (B, 1), labels cond (B,) -> logits (B, V)."""
        # The cache is gathered here, not kept from __init__: export swaps the buffers for traced ones.
        cache = KVCache(
            keys=[getattr(self, f"keys_{i}") for i in range(self.n_layer)],
            values=[getattr(self, f"values_{i}") for i in range(self.n_layer)],
        )
        return self.net(idx, cond, cache=cache, input_pos=input_pos)[:, -1]


class WaveNetDecodeStep(nn.Module):
    """A ``WaveNet`` with its ring buffers (``WaveNet.init_rings``) for ``batch_size`` sequences.

    Args:
        net: the network.
        batch_size: rows B of every call.
    """

    def __init__(self, net: WaveNet, batch_size: int) -> None:
        super().__init__()
        self.net = net
        for i, ring in enumerate(net.init_rings(batch_size)):
            self.register_buffer(f"ring_{i}", ring, persistent=False)  # (B, R, (k - 1) d_i)

    def forward(
        self, idx: Tensor, input_pos: Tensor, cond: Optional[Tensor] = None, local: Optional[Tensor] = None
    ) -> Tensor:
        """idx (B, 1) at position input_pos (1,), labels cond (B,), features local (B, C, F) -> (B, V)."""
        rings = [getattr(self, f"ring_{i}") for i in range(self.net.n_layers)]  # gathered per call, as GPT's
        return self.net.step(idx, input_pos, rings, cond, local)


def export_gpt_decode_step(
    net: GPT, batch_size: int = 1, *, per_row_positions: bool = False
) -> torch.export.ExportedProgram:
    """``torch.export`` the one-token decode step of a causal GPT (``GPTDecodeStep``), in eval mode.

    Args:
        net: the network; its device and dtype are the program's.
        batch_size: rows B of every call (the cache's static shape).
        per_row_positions: ``input_pos`` is (B, 1), one position per row (sequences at different
            lengths); False: (1,), the same for every row.

    Returns:
        The program: ``program.module()(idx (B, 1), input_pos[, cond=labels (B,)]) -> (B, V)``.
    """
    _check_batch_size(batch_size)
    device = net.transformer.wte.weight.device
    kwargs = (
        {} if net.num_classes == 0 else {"cond": torch.zeros(batch_size, dtype=torch.long, device=device)}
    )
    pos_shape = (batch_size, 1) if per_row_positions else (1,)
    args = (
        torch.zeros(batch_size, 1, dtype=torch.long, device=device),
        torch.zeros(pos_shape, dtype=torch.long, device=device),
    )
    return _export(GPTDecodeStep(net, batch_size), args, kwargs)


def export_wavenet_step(net: WaveNet, batch_size: int = 1) -> torch.export.ExportedProgram:
    """``torch.export`` the one-sample step of a WaveNet through ring buffers (``WaveNetDecodeStep``),
    in eval mode, with the number of local frames F dynamic.

    Args:
        net: the network; its device and dtype are the program's.
        batch_size: rows B of every call (the rings' static shape).

    Returns:
        The program: ``program.module()(idx (B, 1), input_pos (1,)[, cond=labels (B,)]
        [, local=features (B, C, F)]) -> (B, V)``.
    """
    _check_batch_size(batch_size)
    device = net.embed.weight.device
    args = (
        torch.zeros(batch_size, 1, dtype=torch.long, device=device),
        torch.zeros(1, dtype=torch.long, device=device),
    )
    kwargs: dict[str, Tensor] = {}
    dynamic: dict[str, object] = {"idx": None, "input_pos": None}
    if net.num_classes > 0:
        kwargs["cond"], dynamic["cond"] = torch.zeros(batch_size, dtype=torch.long, device=device), None
    if net.local_channels > 0:
        kwargs["local"] = torch.zeros(batch_size, net.local_channels, 2, device=device)
        dynamic["local"] = {2: torch.export.Dim.DYNAMIC}  # any clip length
    return _export(WaveNetDecodeStep(net, batch_size), args, kwargs, dynamic)


def export_decode_step(net: nn.Module, batch_size: int = 1) -> torch.export.ExportedProgram:
    """The decode step of a GPT (``export_gpt_decode_step``) or a WaveNet (``export_wavenet_step``);
    one ``ConfigError`` line for any other network."""
    if isinstance(net, GPT):
        return export_gpt_decode_step(net, batch_size)
    if isinstance(net, WaveNet):
        return export_wavenet_step(net, batch_size)
    raise _no_step(net)


def decode_step_signature(net: nn.Module, batch_size: int = 1, *, per_row_positions: bool = False) -> dict:
    """What the decode step of ``net`` takes and returns, for a manifest (``export.json``): per
    input and output its name, shape, dtype, value range and meaning, inputs in call order (``idx``
    and ``input_pos`` positional, the others by keyword)."""

    def spec(name: str, shape: tuple, dtype: str, description: str, high: Optional[int] = None) -> dict:
        entry = {"name": name, "shape": list(shape), "dtype": dtype}
        return {**entry, **({} if high is None else {"range": [0, high - 1]}), "description": description}

    B, gpt = batch_size, isinstance(net, GPT)
    if not gpt and not isinstance(net, WaveNet):
        raise _no_step(net)
    where = f"< block_size {net.block_size}" if gpt else "any, in order"
    inputs = [
        spec(
            "idx", (B, 1), "int64", "the token at input_pos (the prompt's too, one per call)", net.vocab_size
        ),
        spec(
            "input_pos",
            (B, 1) if per_row_positions else (1,),
            "int64",
            f"its position, from 0 ({where}); 0 starts a new sequence",
            net.block_size if gpt else None,
        ),
    ]
    if net.num_classes > 0:
        what = f"class labels; {net.num_classes} is the null label (keyword)"
        inputs.append(spec("cond", (B,), "int64", what, net.num_classes + 1))
    if not gpt and net.local_channels > 0:
        what = f"local features of the whole clip, frame t // {net.hop_length} at position t (keyword)"
        inputs.append(spec("local", (B, net.local_channels, "frames"), "float32", what))
    out = spec(
        "logits", (B, net.vocab_size), "float32", "next-token logits (sample with temperature, top-k, top-p)"
    )
    return {"inputs": inputs, "outputs": [out]}


@torch.no_grad()
def generate_with_step(
    step: nn.Module,
    prompt: Tensor,
    max_new_tokens: int,
    *,
    cond: Optional[Tensor] = None,
    local: Optional[Tensor] = None,
    context: Optional[int] = None,
    per_row_positions: bool = False,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    generator: paradigm.Generators = None,
) -> Tensor:
    """Autoregressive sampling through a decode step: the prompt's tokens one per call at positions
    0 .. T0 - 1, then each drawn token fed back, drawn as ``lit_genai.ar.sampling.generate`` draws
    (``next_token``), so the same generator gives the same tokens.

    Args:
        step: a ``GPTDecodeStep`` / ``WaveNetDecodeStep``, or an exported program's ``module()``.
        prompt: (B, T0) int64 token ids, T0 >= 1; B the step's batch size.
        max_new_tokens: number N of tokens to draw.
        cond: (B,) int64 labels of a class-conditional net, else None.
        local: (B, C, F) local features of a WaveNet with local conditioning, covering the prompt
            and the new tokens, else None.
        context: the positions the step holds (a GPT's ``block_size``); None: no limit (WaveNet).
        per_row_positions: the step takes (B, 1) positions (``export_gpt_decode_step``'s option).
        temperature, top_k, top_p, generator: as for ``generate``.

    Returns:
        (B, T0 + N) int64 token ids.
    """
    check_options(temperature, top_k, top_p)
    check_prompt(prompt, max_new_tokens)
    (B, T0), total = prompt.shape, prompt.shape[1] + max_new_tokens
    if context is not None and total - 1 > context:  # the last token drawn is never fed
        raise ConfigError(
            f"{T0} prompt tokens and {max_new_tokens} new ones need {total - 1} positions, more than the "
            f"decode step's {context} (block_size): draw fewer tokens, or use lit_genai.ar.sampling.generate"
        )
    paradigm._per_sample(generator, B)  # one generator per row: check the count before any work
    extra = {name: value for name, value in (("cond", cond), ("local", local)) if value is not None}
    seq = torch.zeros(B, total, dtype=torch.long, device=prompt.device)
    seq[:, :T0] = prompt
    for t in range(total - 1):
        pos = torch.full((B, 1) if per_row_positions else (1,), t, dtype=torch.long, device=prompt.device)
        logits = step(seq[:, t : t + 1], pos, **extra)  # (B, V)
        if t >= T0 - 1:
            seq[:, t + 1] = next_token(logits, temperature, top_k, top_p, generator)
    return seq


def _no_step(net: nn.Module) -> ConfigError:
    return ConfigError(
        f"export: a {type(net).__name__} has no one-token decode step; only GPT and WaveNet nets "
        "(lit_genai.nn.transformer.GPT, lit_genai.nn.wavenet.WaveNet) export one"
    )


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(
            f"export: batch_size={batch_size} must be at least 1 (the decode step's static batch)"
        )


def _export(
    step: nn.Module, args: tuple, kwargs: dict[str, Tensor], dynamic: Optional[dict] = None
) -> torch.export.ExportedProgram:
    """``torch.export.export`` in eval mode (no dropout in the graph) without gradients."""
    with paradigm.eval_mode(step), torch.no_grad():
        return torch.export.export(step, args, kwargs, dynamic_shapes=dynamic)
