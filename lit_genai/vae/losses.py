"""Variational autoencoder objectives as pure functions: KL terms, decoder likelihoods, IWAE.

Papers:
    - Kingma & Welling 2014, "Auto-Encoding Variational Bayes" (VAE): the ELBO
      L(x) = E_q(z|x)[log p(x|z)] - KL(q(z|x) || p(z)) (eq. 3), the reparameterisation
      z = mu + sigma * eps (sec. 2.4), and the closed-form Gaussian KL (Appendix B, eq. 10).
    - Higgins et al. 2017, "beta-VAE": the KL term weighted by beta.
    - Bowman et al. 2016 (sec. 3.1) and Sonderby et al. 2016 ("Ladder VAE", sec. 2.2): KL warm-up,
      the KL weight raised linearly from 0.
    - Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive Flow"
      (IAF), Appendix C: free bits, each latent dimension's KL, averaged over the minibatch,
      clamped below at lambda.
    - Burda, Grosse & Salakhutdinov 2016, "Importance Weighted Autoencoders" (IWAE): the bound
      L_k = E[log (1/k) sum_i w_i], w_i = p(x, z_i) / q(z_i|x) (eq. 8), which is the ELBO at k = 1,
      rises with k and tends to log p(x) (Theorem 1); with k = 5000 it is the test NLL estimate of
      sec. 5.2.
    - Salimans et al. 2017, "PixelCNN++" (sec. 2.1) and Kingma et al. 2016 (IAF, sec. 5.2): the
      logistic discretised to the 256 pixel values, edge bins extended to +-infinity.

Conventions: images x in [-1, 1] (8-bit data on the grid k / 127.5 - 1, bins 2/255 wide);
log-likelihoods in nats, summed over every dimension but the first (one number per example).

Shape legend: B batch, D latent dimensions (any trailing latent shape works where a function says
"(B, ...)"), C/H/W image, K importance samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_genai.metrics.likelihood import HALF_BIN, normal_kl

LOG_2PI = math.log(2.0 * math.pi)


def _per_example(values: Tensor) -> Tensor:
    """(B, ...) -> (B,): the sum over every dimension but the first."""
    return values.flatten(1).sum(dim=1)


# ---------------------------------------------------------------------- latent terms


def standard_normal_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) of each latent dimension (Kingma & Welling 2014, App. B).

    -KL = 1/2 (1 + log sigma^2 - mu^2 - sigma^2) per dimension.

    Args:
        mean, logvar: (B, ...) posterior means and log-variances.

    Returns:
        (B, ...) KL of each dimension in nats (>= 0).
    """
    zero = torch.zeros((), dtype=mean.dtype, device=mean.device)
    return normal_kl(mean, logvar, zero, zero)


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(q(z|x) || p(z)) of a diagonal Gaussian posterior and p(z) = N(0, I), per example.

    Args:
        mean, logvar: (B, ...) posterior means and log-variances.

    Returns:
        (B,) KL in nats.
    """
    return _per_example(standard_normal_kl(mean, logvar))


def gaussian_log_prob(z: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mean, diag(exp(logvar))) per example.

    Args:
        z: (..., B, D...) points; leading sample dimensions broadcast against ``mean``.
        mean, logvar: broadcastable to ``z``.

    Returns:
        ``z``'s shape with the last ``mean.ndim - 1`` dimensions summed: (B,) for z (B, D),
        (K, B) for z (K, B, D) and mean (B, D).
    """
    log_p = -0.5 * (LOG_2PI + logvar + (z - mean).pow(2) * torch.exp(-logvar))
    return log_p.flatten(z.ndim - (mean.ndim - 1)).sum(dim=-1)


def standard_normal_log_prob(z: Tensor, latent_dims: int = 1) -> Tensor:
    """log N(z; 0, I), summed over the last ``latent_dims`` dimensions of ``z`` (e.g. (K, B, D) -> (K, B))."""
    return (-0.5 * (LOG_2PI + z.pow(2))).flatten(z.ndim - latent_dims).sum(dim=-1)


# ---------------------------------------------------------------------- decoder likelihoods


def bernoulli_log_likelihood(logits: Tensor, target: Tensor) -> Tensor:
    """log p(x|z) of a factorised Bernoulli decoder (Kingma & Welling 2014, App. C.1), per example.

    sum_j [t_j log sigmoid(l_j) + (1 - t_j) log(1 - sigmoid(l_j))], computed from the logits
    (``binary_cross_entropy_with_logits``). For soft targets t in (0, 1) it is the negative cross-entropy,
    not a normalised likelihood: it is maximised at sigmoid(l) = t.

    Args:
        logits: (B, C, H, W) decoder logits.
        target: (B, C, H, W) in [0, 1]: binary pixels (or grey levels as soft targets).

    Returns:
        (B,) log-likelihood in nats (<= 0 for binary targets).
    """
    return -_per_example(F.binary_cross_entropy_with_logits(logits, target, reduction="none"))


def gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor | float) -> Tensor:
    """log N(x; mean, sigma^2 I) of a Gaussian decoder (Kingma & Welling 2014, App. C.2), per example.

    Args:
        x: (B, C, H, W) data.
        mean: (B, C, H, W) decoder means.
        log_scale: log sigma, a float (fixed sigma) or a tensor broadcastable to ``x`` (e.g. a
            learned per-dimension (C, H, W)).

    Returns:
        (B,) log-density in nats (a density: it can be positive).
    """
    log_scale = torch.as_tensor(log_scale, dtype=x.dtype, device=x.device)
    z = (x - mean) * torch.exp(-log_scale)
    return _per_example((-0.5 * (LOG_2PI + z.pow(2)) - log_scale).expand_as(x))


def discretized_logistic_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor | float) -> Tensor:
    """log P(x|z) of 8-bit data under a logistic discretised to the 256 pixel bins, per example.

    The bin of x = k / 127.5 - 1 is [x - 1/255, x + 1/255]; the first bin extends to -inf and the
    last to +inf (PixelCNN++ sec. 2.1; IAF sec. 5.2), so the 256 probabilities sum to 1. With
    a = (x - mean + 1/255) / s and b = (x - mean - 1/255) / s the bin's probability is
    sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(b - a)), whose logarithm
    -softplus(-a) - softplus(b) + log(-expm1(b - a)) is finite and accurate for any distance to the
    mean and any scale (PixelCNN++'s code instead switches to the density at the bin centre when the
    difference underflows). The first bin is log sigmoid(a), the last log sigmoid(-b).

    Args:
        x: (B, C, H, W) data on the 8-bit grid in [-1, 1].
        mean: (B, C, H, W) logistic locations.
        log_scale: log s of the logistic, a float or a tensor broadcastable to ``x``.

    Returns:
        (B,) log-probability in nats (<= 0).
    """
    return _per_example(discretized_logistic_log_prob(x, mean, log_scale))


def discretized_logistic_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor | float) -> Tensor:
    """Elementwise log-probabilities of ``discretized_logistic_log_likelihood``: x's broadcast shape."""
    log_scale = torch.as_tensor(log_scale, dtype=x.dtype, device=x.device)
    inv_scale = torch.exp(-log_scale)
    centered = x - mean
    a = inv_scale * (centered + HALF_BIN)  # standardised upper edge of x's bin
    b = inv_scale * (centered - HALF_BIN)  # standardised lower edge
    log_first = -F.softplus(-a)  # log sigmoid(a): the bin (-inf, -1 + 1/255]
    log_last = -F.softplus(b)  # log sigmoid(-b) = log(1 - sigmoid(b)): the bin [1 - 1/255, inf)
    tiny = torch.finfo(x.dtype).tiny
    log_inner = log_first + log_last + torch.log((-torch.expm1(b - a)).clamp(min=tiny))
    # -0.999 / 0.999 lie between the edge values (+-1) and their neighbours (+-(1 - 2/255)).
    return torch.where(x < -0.999, log_first, torch.where(x > 0.999, log_last, log_inner))


# ---------------------------------------------------------------------- schedules and free bits


def kl_weight(step: int, warmup_steps: int, beta: float = 1.0) -> float:
    """The KL weight at optimisation ``step``: linear from 0 at step 0 to ``beta`` at ``warmup_steps``.

    Warm-up (Bowman et al. 2016; Sonderby et al. 2016) lets the decoder use the latents before the
    KL term pulls the posterior to the prior; ``beta`` (Higgins et al. 2017) is the final weight.
    ``warmup_steps <= 0``: ``beta`` from the start.
    """
    if warmup_steps <= 0:
        return float(beta)
    return float(beta) * min(1.0, max(0, step) / warmup_steps)


def free_bits_kl(kl_per_dim: Tensor, free_bits: float) -> Tensor:
    """The KL term with free bits (Kingma et al. 2016, IAF, Appendix C), a scalar.

    sum_j max(lambda, E_batch[KL_j]): the KL of each latent dimension j is averaged over the
    minibatch, then clamped below at lambda nats, so a dimension whose KL is under lambda gets no
    gradient pulling it to the prior. ``free_bits = 0`` gives the plain batch-mean KL.

    Args:
        kl_per_dim: (B, D...) KL of each example and latent dimension (``standard_normal_kl``).
        free_bits: lambda, nats per latent dimension.

    Returns:
        () the clamped KL per example (to add to the batch-mean reconstruction term).
    """
    per_dim = kl_per_dim.flatten(1).mean(dim=0)  # (D,)
    if free_bits > 0:
        per_dim = per_dim.clamp(min=free_bits)
    return per_dim.sum()


# ---------------------------------------------------------------------- importance weighting


def log_importance_weights(log_likelihood: Tensor, z: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log w = log p(x|z) + log p(z) - log q(z|x) for p(z) = N(0, I) and a diagonal Gaussian q.

    Args:
        log_likelihood: (K, B) log p(x|z_i) of each sample.
        z: (K, B, D...) samples z_i ~ q(z|x).
        mean, logvar: (B, D...) the posterior's parameters.

    Returns:
        (K, B) log-weights.
    """
    latent_dims = mean.ndim - 1
    return log_likelihood + standard_normal_log_prob(z, latent_dims) - gaussian_log_prob(z, mean, logvar)


def iwae_bound(log_weights: Tensor, dim: int = 0) -> Tensor:
    """The importance-weighted bound log (1/K) sum_i w_i (Burda et al. 2016, eq. 8) from log-weights.

    Args:
        log_weights: (K, B) log w_i (``dim`` selects the sample axis).

    Returns:
        (B,) the bound in nats: the ELBO estimate at K = 1, a tighter bound on log p(x) as K grows.
    """
    return torch.logsumexp(log_weights, dim=dim) - math.log(log_weights.shape[dim])


def chunked_iwae_bound(
    log_weight_fn: Callable[[int], Tensor], num_samples: int, chunk_size: Optional[int] = None
) -> Tensor:
    """The IWAE bound of ``num_samples`` importance samples, drawn ``chunk_size`` at a time.

    Memory is bounded by one chunk: each chunk's log-weights (k_c, B) are reduced to a logsumexp
    (B,) and accumulated with ``logaddexp``, so log sum_i w_i over all samples is exact (up to float
    round-off) whatever the chunking. The test NLL of Burda et al. 2016 (sec. 5.2) is
    -``chunked_iwae_bound(.., 5000, ..)``.

    Args:
        log_weight_fn: ``k -> (k, B)`` log-weights of k fresh samples (``log_importance_weights``).
        num_samples: K, the total number of samples.
        chunk_size: samples per call (None or <= 0: all at once).

    Returns:
        (B,) the bound in nats.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    chunk = num_samples if chunk_size is None or chunk_size <= 0 else min(chunk_size, num_samples)
    total: Optional[Tensor] = None
    done = 0
    while done < num_samples:
        k = min(chunk, num_samples - done)
        part = torch.logsumexp(log_weight_fn(k), dim=0)  # (B,)
        total = part if total is None else torch.logaddexp(total, part)
        done += k
    return total - math.log(num_samples)
