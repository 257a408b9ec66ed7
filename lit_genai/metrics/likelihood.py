"""Likelihood metrics shared by every paradigm: bits per dimension, perplexity, Gaussian terms.

Diffusion (variational bound), VAEs (ELBO / IWAE) and autoregressive models (exact NLL) all report
through these functions, so that ``val/bpd`` means the same thing everywhere (docs/architecture.md,
"Metric names").

Conventions:
    - NLLs are in nats (natural log); ``bits_per_dim`` converts: bits/dim = NLL / (D ln 2), with D
      the number of dimensions of one example (C * H * W for an image, T for a sequence).
    - Image data are 8-bit pixels k in {0, ..., 255}, scaled to x = k / 127.5 - 1 in [-1, 1]
      (``lit_genai.data``): neighbouring values are 2/255 apart.
    - A **discrete** likelihood of the 8-bit data (DDPM's decoder, ``discretized_gaussian_log_likelihood``;
      a softmax over 256 values) puts probability mass on each of the 256 values: its NLL is already
      the NLL of the 8-bit data and needs no dequantisation or offset.
    - A **continuous** density p_y on dequantised data y = a (k + u) + b, u ~ U(0, 1)^D (``a`` the bin
      width on y's scale) bounds the discrete NLL (Theis et al. 2016, "A note on the evaluation of
      generative models", sec. 3.1; Ho et al. 2019, "Flow++", sec. 3.1):
          -log P(k) <= E_u[-log p_y(y)] - D ln(a),
      (Jensen on P(k) = a^D E_u[p_y(y)]). For pixels in [0, 256) scaled to [-1, 1), a = 2/256 and
      the offset is D ln 128: +7 bits/dim. For x = k / 127.5 - 1 dequantised by adding
      U(-1/255, 1/255) noise, a = 2/255 and the offset is D ln 127.5 (+6.994 bits/dim).
      ``dequantized_bits_per_dim`` applies it.

Implements:
    - Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models", sec. 3.3: the Gaussian
      discretised to 256 bins with the edge bins extended to +-infinity (authors' code, and
      improved-diffusion's ``discretized_gaussian_log_likelihood``), here with the exact normal CDF
      in log space instead of the tanh approximation.
    - The KL divergence of two diagonal Gaussians (improved-diffusion's ``normal_kl``).

Shapes: every function is elementwise (any shape, broadcasting) unless its docstring says otherwise;
    B batch size, D dimensions per example.
"""

import math

import torch
from torch import Tensor

from lit_genai.errors import ConfigError

# Half the distance between neighbouring 8-bit values on the [-1, 1] scale: x = k / 127.5 - 1.
HALF_BIN = 1.0 / 255.0


def _check_num_dims(num_dims: int) -> None:
    if not isinstance(num_dims, int) or isinstance(num_dims, bool) or num_dims < 1:
        raise ConfigError(f"num_dims must be a positive integer (dimensions per example), got {num_dims!r}")


def bits_per_dim(nll_nats: Tensor, num_dims: int) -> Tensor:
    """Bits per dimension of a per-example NLL: nll / (D ln 2).

    Args:
        nll_nats: NLL of each example in nats, any shape (e.g. (B,)).
        num_dims: D, the number of dimensions of one example (C * H * W).

    Returns:
        Same shape as ``nll_nats``.
    """
    _check_num_dims(num_dims)
    return nll_nats / (num_dims * math.log(2.0))


def perplexity(mean_nll_nats_per_token: Tensor) -> Tensor:
    """Perplexity exp(mean NLL per token); the mean must be over tokens, in nats."""
    return torch.exp(mean_nll_nats_per_token)


def uniform_dequantization_offset(num_dims: int, bin_width: float = 2.0 / 256.0) -> float:
    """Nats to add to a continuous NLL on dequantised data to bound the discrete NLL: -D ln(bin_width).

    Args:
        num_dims: D, the number of dimensions of one example.
        bin_width: width of one quantisation bin on the scale the density is defined on: 2/256 for
            [0, 256) scaled to [-1, 1) (offset D ln 128), 2/255 for k / 127.5 - 1 plus
            U(-1/255, 1/255) noise (offset D ln 127.5), 1/256 for [0, 1), 1 for raw [0, 256).

    Returns:
        The offset in nats (a Python float).
    """
    _check_num_dims(num_dims)
    if not bin_width > 0.0:
        raise ConfigError(f"bin_width must be > 0, got {bin_width}")
    # -log P(k) <= E_u[-log p_y(a (k + u) + b)] - D ln a  (module docstring)
    return -num_dims * math.log(bin_width)


def dequantized_bits_per_dim(nll_nats: Tensor, num_dims: int, bin_width: float = 2.0 / 256.0) -> Tensor:
    """Bits/dim of the 8-bit data bounded by a continuous density's NLL on uniformly dequantised data.

    Args:
        nll_nats: per-example continuous NLL -log p_y(y) in nats (any shape, e.g. (B,)), measured on
            the dequantised data y.
        num_dims: D, the number of dimensions of one example.
        bin_width: see ``uniform_dequantization_offset`` (default: [0, 256) scaled to [-1, 1)).

    Returns:
        Upper bound on the discrete bits/dim, same shape as ``nll_nats``.
    """
    return bits_per_dim(nll_nats + uniform_dequantization_offset(num_dims, bin_width), num_dims)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats.

    KL = 0.5 (logvar2 - logvar1 + exp(logvar1 - logvar2) - 1 + (mean1 - mean2)^2 exp(-logvar2)),
    written with ``expm1`` so that nearly equal variances (most diffusion steps) lose no precision.
    Arguments broadcast against each other.
    """
    delta = logvar1 - logvar2
    return 0.5 * (torch.expm1(delta) - delta + (mean1 - mean2).pow(2) * torch.exp(-logvar2))


def _log_sub_exp(log_a: Tensor, log_b: Tensor) -> Tensor:
    """log(exp(log_a) - exp(log_b)) for log_a >= log_b, floored at the smallest normal float."""
    tiny = torch.finfo(log_a.dtype).tiny
    return log_a + torch.log((-torch.expm1(log_b - log_a)).clamp(min=tiny))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Log-probability of 8-bit data x under a Gaussian discretised to the 256 pixel bins.

    The bin of x = k / 127.5 - 1 is [x - 1/255, x + 1/255]; the first bin extends to -inf and the
    last to +inf (DDPM sec. 3.3, eq. 13), so the 256 probabilities sum to 1 for any mean and scale.
    The probability of a bin is computed in log space with the exact normal CDF (``log_ndtr``), on
    the side of the Gaussian where the bin lies, so bins many standard deviations away keep an
    accurate (finite) log-probability and gradients stay finite.

    Args:
        x: data in [-1, 1] on the 8-bit grid, any shape.
        means: Gaussian means, broadcastable to ``x``.
        log_scales: log standard deviations, broadcastable to ``x``.

    Returns:
        Per-element log-probabilities in nats (<= 0), ``x``'s broadcast shape.
    """
    inv_scale = torch.exp(-log_scales)
    centered = x - means
    upper = inv_scale * (centered + HALF_BIN)  # standardised upper edge of x's bin
    lower = inv_scale * (centered - HALF_BIN)  # standardised lower edge
    # First bin (-inf, -1 + 1/255]: Phi(upper). Last bin [1 - 1/255, inf): 1 - Phi(lower) = Phi(-lower).
    log_first = torch.special.log_ndtr(upper)
    log_last = torch.special.log_ndtr(-lower)
    # Inner bins: Phi(upper) - Phi(lower), or the mirror Phi(-lower) - Phi(-upper) when the bin lies
    # above the mean, so that both terms are small tail probabilities rather than two values near 1.
    below = _log_sub_exp(log_first, torch.special.log_ndtr(lower))
    above = _log_sub_exp(log_last, torch.special.log_ndtr(-upper))
    log_inner = torch.where(upper + lower > 0, above, below)
    # -0.999 / 0.999 sit between the edge values (+-1) and their neighbours (+-(1 - 2/255)), as in the
    # authors' code.
    return torch.where(x < -0.999, log_first, torch.where(x > 0.999, log_last, log_inner))
