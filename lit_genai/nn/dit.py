"""DiT: the Diffusion Transformer of Peebles & Xie 2023, "Scalable Diffusion Models with Transformers".

A denoiser with the UNet's call signature, ``net(x_t (B, C, H, W), t (B,), y (B,) or None)``
(docs/architecture.md, "Generative modules"). The image is cut into p x p patches, each a token
(a stride-p conv, Section 3.2 "Patchify"), plus a fixed 2-D sine-cosine positional embedding; N
transformer blocks are conditioned on c = t_emb + y_emb through adaLN-Zero (Section 3.2, "DiT block
design"): c regresses a shift, scale and gate for the attention and for the MLP branch of every
block, the regressing linear layers are zero-initialised, so every block starts as the identity.
A final adaLN layer and a zero-initialised linear map each token back to a p x p x C_out patch,
which are reassembled ("unpatchify"). The layer choices and the initialisation follow the authors'
code (``facebookresearch/DiT``, ``models.py``): LayerNorm without affine parameters (eps 1e-6),
tanh-GELU MLPs, Xavier-uniform linear layers, N(0, 0.02) timestep-MLP and label-embedding weights.

Text conditioning (as PixArt-alpha, Chen et al. 2023, adds to DiT): with a ``text_encoder``, every block
is followed by cross-attention to the caption's tokens (``cross_attention.CrossAttention``, zero output
projection) and the pooled caption vector is added to c; ``forward(x, t, y, context)``. Without one no
such layer exists, so class-conditional and unconditional DiTs are unchanged.

Shape legend: B batch, C channels, H = W = image_size, p patch_size, h = w = H / p, N = h * w
tokens, D hidden_size, nh heads, Dh = D / nh head width.
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lit_genai.errors import ConfigError
from lit_genai.nn.cross_attention import CrossAttention, PooledText, TextContext, check_context
from lit_genai.nn.layers import check_labels

FREQUENCY_EMBEDDING_SIZE = 256  # the paper's 256-dimensional timestep frequency embedding (Appendix A)
REFERENCE_TIMESTEPS = 1000  # DiT embeds the integer step of a T = 1000 schedule


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, p * p * C) tokens, row-major over the h x w patch grid.

    The features of a token are ordered (row in patch, column in patch, channel), as the output of
    DiT's final layer, so that ``unpatchify(patchify(x, p), p, C) == x``.
    """
    B, C, H, W = x.shape
    p = patch_size
    x = x.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)
    x = torch.einsum("bchpwq->bhwpqc", x)  # (B, h, w, p, p, C)
    return x.reshape(B, (H // p) * (W // p), p * p * C)  # (B, N, p*p*C)


def unpatchify(tokens: Tensor, patch_size: int, channels: int) -> Tensor:
    """(B, N, p * p * C) tokens of a square h x h grid -> (B, C, h * p, h * p), as DiT's ``unpatchify``."""
    B, N, _ = tokens.shape
    p, h = patch_size, math.isqrt(N)
    if h * h != N:
        raise ValueError(f"unpatchify: {N} tokens are not a square grid")
    x = tokens.reshape(B, h, h, p, p, channels)  # (B, h, w, p, p, C)
    x = torch.einsum("bhwpqc->bchpwq", x)  # (B, C, h, p, w, p)
    return x.reshape(B, channels, h * p, h * p)  # (B, C, H, W)


def _sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """(M,) positions -> (M, dim): [sin(pos * omega), cos(pos * omega)], omega_i = 10000^(-2i / dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))  # (dim/2,)
    angles = positions.double()[:, None] * omega[None]  # (M, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # (M, dim)


def sincos_pos_embed_2d(dim: int, grid_size: int) -> Tensor:
    """Fixed 2-D sine-cosine positional embedding (the MAE/DiT one), (grid_size**2, dim) float32.

    Token n = (row i, column j) gets [1-D embedding of j, 1-D embedding of i], dim / 2 each; ``dim``
    must be a multiple of 4.
    """
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")  # (h, w)
    emb_col = _sincos_1d(dim // 2, cols.reshape(-1))  # (N, dim/2); MAE's grid puts w first
    emb_row = _sincos_1d(dim // 2, rows.reshape(-1))  # (N, dim/2)
    return torch.cat([emb_col, emb_row], dim=1).float()  # (N, dim)


def frequency_embedding(
    t: Tensor, dim: int = FREQUENCY_EMBEDDING_SIZE, max_period: float = 10000.0
) -> Tensor:
    """(B,) (possibly fractional) timesteps -> (B, dim): [cos(t * f_i), sin(t * f_i)],
    f_i = max_period^(-i / (dim / 2)), as DiT's ``TimestepEmbedder.timestep_embedding`` (from GLIDE)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)  # (dim/2,)
    args = t.float()[:, None] * freqs[None]  # (B, dim/2)
    return F.pad(torch.cat([args.cos(), args.sin()], dim=1), (0, dim % 2))  # (B, dim)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: (B, N, D) normalised tokens, (B, D) shift and scale -> x * (1 + scale) + shift."""
    return x * (1 + scale[:, None]) + shift[:, None]  # (B, N, D)


class Attention(nn.Module):
    """Multi-head self-attention over the N tokens (qkv with bias, as timm's ``Attention``)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads)  # (B, N, 3, nh, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, nh, N, Dh)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, nh, N, Dh), softmax(q k^T / sqrt(Dh)) v
        return self.proj(h.transpose(1, 2).reshape(B, N, D))  # (B, N, D)


class DiTBlock(nn.Module):
    """A transformer block with adaLN-Zero conditioning (Peebles & Xie 2023, Figure 3).

    x <- x + gate_msa * Attn(modulate(LN(x), shift_msa, scale_msa)), then the same for the MLP; the
    six (B, D) vectors are a zero-initialised linear map of SiLU(c), so the block starts as the identity.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_hidden, hidden_size),
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """(B, N, D) tokens, (B, D) conditioning -> (B, N, D)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(
            6, dim=1
        )
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (B, N, D)
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (B, N, D)


class FinalLayer(nn.Module):
    """adaLN (shift and scale from c) and a linear map of each token to a p x p x C_out patch."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """(B, N, D), (B, D) -> (B, N, p * p * C_out)."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # (B, D) each
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, N, p*p*C_out)


class DiT(nn.Module):
    """The Diffusion Transformer (Peebles & Xie 2023), predicting a (B, out_channels, H, W) tensor.

    The defaults are DiT-S/2 (hidden 384, depth 12, 6 heads, patch 2: 33M parameters on the paper's
    32 x 32 x 4 latents, 6.06 Gflops); DiT-B is (768, 12, 12), DiT-L (1024, 24, 16), DiT-XL
    (1152, 28, 16), and "/p" is the patch size. Images must be ``image_size`` square.

    Args:
        in_channels: Channels of the input (1 for MNIST, 3 for RGB images, 4 for SD-VAE latents).
        image_size: Height and width of the input; a multiple of ``patch_size``.
        patch_size: Side p of the square patches that become tokens: (image_size / p)^2 tokens.
        hidden_size: Token width D; a multiple of ``num_heads`` and of 4 (the 2-D sin-cos embedding).
        depth: Number of DiT blocks.
        num_heads: Attention heads per block.
        mlp_ratio: Width of the MLP hidden layer relative to ``hidden_size``.
        num_classes: Number of classes for class conditioning; 0 for an unconditional model. With
            ``num_classes > 0`` a label embedding of ``num_classes + 1`` rows is added to the timestep
            embedding; label ``num_classes`` is the "null" label of classifier-free guidance.
        learn_sigma: Also output a variance (out_channels = 2 * in_channels), as the paper's models
            (trained with the improved-DDPM hybrid loss). ``Diffusion`` trains the mean only: keep False.
        num_timesteps: Number of diffusion steps T of the schedule the net is trained with. DiT's
            timestep embedding takes the integer step of a T = 1000 schedule; other T are rescaled
            to t * 1000 / T so that the frequencies cover the same range (improved DDPM's
            ``rescale_timesteps``). Set it to ``model.init_args.num_timesteps``.
        text_encoder: A text encoder whose context every block attends to (module docstring); None:
            no text.
        checkpoint_activations: In training (``self.training`` and gradients on), keep only each
            block's input and recompute the block (and its cross-attention) in the backward pass
            (``torch.utils.checkpoint``, non-reentrant): less memory for one more forward pass of
            the blocks. Same outputs and gradients; no parameters, so checkpoints are unchanged.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        patch_size: int = 2,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        learn_sigma: bool = False,
        num_timesteps: int = 1000,
        text_encoder: Optional[nn.Module] = None,
        checkpoint_activations: bool = False,
    ) -> None:
        super().__init__()
        self.checkpoint_activations = checkpoint_activations
        if patch_size < 1 or image_size % patch_size:
            raise ConfigError(
                f"DiT: image_size={image_size} is not a multiple of patch_size={patch_size}; "
                f"set patch_size to a divisor of {image_size} (or resize the images)"
            )
        if num_heads < 1 or hidden_size % num_heads:
            raise ConfigError(
                f"DiT: hidden_size={hidden_size} is not divisible by num_heads={num_heads}; "
                "set hidden_size to a multiple of num_heads"
            )
        if hidden_size % 4:
            raise ConfigError(
                f"DiT: hidden_size={hidden_size} must be a multiple of 4 for the 2-D sin-cos positional "
                "embedding; set hidden_size to a multiple of 4"
            )
        if num_classes < 0 or num_timesteps < 1:
            raise ConfigError(
                f"DiT: num_classes={num_classes} must be >= 0 and num_timesteps={num_timesteps} >= 1"
            )
        self.in_channels, self.image_size, self.patch_size = in_channels, image_size, patch_size
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.num_classes, self.num_timesteps = num_classes, num_timesteps
        grid = image_size // patch_size

        self.x_embedder = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        # Fixed, not trained (DiT keeps it as a frozen parameter); recomputed from the config.
        self.register_buffer("pos_embed", sincos_pos_embed_2d(hidden_size, grid)[None], persistent=False)
        self.t_embedder = nn.Sequential(
            nn.Linear(FREQUENCY_EMBEDDING_SIZE, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.y_embedder = nn.Embedding(num_classes + 1, hidden_size) if num_classes > 0 else None
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self._init_weights()
        # After _init_weights (its Xavier init would undo the zero output projections), and only with
        # text, so a DiT without text is unchanged.
        self.text_encoder = text_encoder
        if text_encoder is not None:
            context_dim = int(text_encoder.width)
            self.text_pool = PooledText(context_dim, hidden_size)
            self.cross = nn.ModuleList(
                CrossAttention(hidden_size, context_dim, num_heads) for _ in range(depth)
            )

    def _init_weights(self) -> None:
        """DiT's ``initialize_weights``: Xavier linears, adaLN-Zero, zero output layer."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.x_embedder.weight  # (D, C, p, p), initialised as the linear map it is
        nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        nn.init.normal_(self.t_embedder[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder[2].weight, std=0.02)
        for layer in [
            *(block.adaLN_modulation[-1] for block in self.blocks),
            self.final_layer.adaLN_modulation[-1],
        ]:
            nn.init.zeros_(layer.weight)  # adaLN-Zero: every block is the identity at initialisation
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.final_layer.linear.weight)  # the output starts at zero
        nn.init.zeros_(self.final_layer.linear.bias)

    def forward(
        self, x: Tensor, t: Tensor, y: Optional[Tensor] = None, context: Optional[TextContext] = None
    ) -> Tensor:
        """Predict from x (B, C, H, W), timesteps t (B,), labels y (B,) int64 in [0, num_classes] and
        the text encoder's ``context`` (None: no text).

        ``y=None`` means the null label for every item. An unconditional model (``num_classes == 0``)
        raises ValueError when given labels, rather than silently ignoring them.
        """
        B, C, H, W = x.shape
        S = self.image_size
        if C != self.in_channels or (H, W) != (S, S) or t.shape != (B,):
            raise ValueError(
                f"DiT: expected x (B, {self.in_channels}, {S}, {S}) and t (B,), "
                f"got x {tuple(x.shape)} and t {tuple(t.shape)}"
            )
        tokens = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D)
        c = self.t_embedder(frequency_embedding(t * (REFERENCE_TIMESTEPS / self.num_timesteps)))  # (B, D)
        y = check_labels("DiT", self.num_classes, y, B, none_is_null=True, device=x.device)  # (B,) or None
        if self.y_embedder is not None:
            c = c + self.y_embedder(y)  # (B, D)
        check_context("DiT", self.text_encoder, context, B)
        if context is not None:
            c = c + self.text_pool(context.pooled)  # (B, D); + 0 for an empty caption
        recompute = self.checkpoint_activations and self.training and torch.is_grad_enabled()
        for i in range(len(self.blocks)):
            if recompute:
                tokens = checkpoint(self._block, i, tokens, c, context, use_reentrant=False)
            else:
                tokens = self._block(i, tokens, c, context)  # (B, N, D)
        out = self.final_layer(tokens, c)  # (B, N, p*p*C_out)
        return unpatchify(out, self.patch_size, self.out_channels)  # (B, C_out, H, W)

    def _block(self, i: int, tokens: Tensor, c: Tensor, context: Optional[TextContext]) -> Tensor:
        """Block i, then its cross-attention to the caption when there is one: (B, N, D) -> (B, N, D)."""
        tokens = self.blocks[i](tokens, c)
        if context is not None:
            tokens = self.cross[i](tokens, context)
        return tokens
