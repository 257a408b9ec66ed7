"""The variational bound of a DDPM on the NLL of 8-bit images, in bits per dimension.

Implements:
    - Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models" (DDPM), eq. 5:
          -log p(x0) <= L = L_T + sum_{t>1} L_{t-1} + L_0,
          L_T     = KL(q(x_T | x0) || N(0, I))                          (the prior term),
          L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)),  x_t ~ q(x_t | x0),
          L_0     = -log p(x0 | x_1), the Gaussian discretised to 256 bins (sec. 3.3, eq. 13).
      The reverse process p(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I) has the posterior mean
      of the predicted x0 (eq. 7) and a fixed variance sigma_t^2 = beta_t or beta tilde_t (sec. 3.2).
    - Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models": the evaluation
      loop of their code (``_vb_terms_bpd``, ``_prior_bpd``, ``calc_bpd_loop``), for eps-, x0- and
      v-predicting networks (converted with ``losses.to_x0_eps``).

Every term is the mean over the D = C * H * W dimensions of one example, divided by ln 2: bits
per dimension of the 8-bit data (``lit_genai.metrics.likelihood`` states the conventions; the
discretised decoder needs no dequantisation offset). x0 must be on the 8-bit grid k / 127.5 - 1.

Indexing follows ``schedules.py``: index t in 0..T-1 is the paper's step t+1, so the term at
index 0 is the decoder L_0 and the term at index t >= 1 is the KL L_t (paper's L_{t}, t = index).

Cost and the stochastic estimate: the exact bound needs one network call per step, T calls per
batch (1000 for DDPM). With ``timesteps = k``, each example instead draws k distinct indices S
uniformly from {1, ..., T-1} and the KL sum is estimated by (T-1)/k * sum_{t in S} L_t, unbiased
because each index is drawn with probability k/(T-1). The decoder term L_0 and the prior L_T are
always computed exactly (k + 1 calls per batch). The estimate's variance over the draw of S is
    (T-1)^2 / k * s^2 * (T-1-k) / (T-2),
s^2 the variance of L_t over t in 1..T-1 for that example (sampling without replacement); L_t is
largest at small t for DDPM, so s is large and k of a few dozen gives a noisy per-batch value whose
mean over a validation set is still unbiased. Nichol & Dhariwal (sec. 3.3) importance-sample t to
reduce this variance; not done here.

Shapes:
    B batch size, C/H/W image channels/height/width, T number of diffusion steps, K sampled steps.
"""

import math
from collections.abc import Mapping
from typing import Literal, Optional

import torch
from torch import Tensor

from lit_genai.diffusion.losses import Prediction, check_prediction, to_x0_eps
from lit_genai.diffusion.sampling import ModelFn
from lit_genai.diffusion.schedules import q_sample
from lit_genai.errors import ConfigError
from lit_genai.metrics.likelihood import discretized_gaussian_log_likelihood, normal_kl

SCHEDULE_KEYS = (
    "betas",
    "alpha_bar",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def reverse_log_variance(schedule: Mapping[str, Tensor], variance: Literal["beta", "beta_tilde"]) -> Tensor:
    """log sigma_t^2 of the fixed-variance reverse process, (T,), for every step.

    "beta": log beta_t, except at index 0 where beta tilde at index 1 stands in: DDPM's
        "fixedlarge" (authors' ``diffusion_utils_2.py``) and improved-diffusion's
        ``ModelVarType.FIXED_LARGE`` do the same "to get a better decoder log likelihood".
    "beta_tilde": log beta tilde_t, clipped at index 0 to beta tilde at index 1 (beta tilde is 0
        there), DDPM's "fixedsmall" (``posterior_log_variance_clipped``).
    Either way the decoder L_0 uses the variance beta tilde at index 1.
    """
    if variance == "beta_tilde":
        return schedule["posterior_log_variance_clipped"]
    if variance == "beta":
        betas = schedule["betas"]
        return torch.log(torch.cat([schedule["posterior_variance"][1:2], betas[1:]]))  # (T,)
    raise ConfigError(f"unknown variance {variance!r}; choose 'beta' or 'beta_tilde'")


def _gather(a: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """a[t] as (B, 1, ..., 1) in ``like``'s dtype and device (cast before moving: float64 stays on CPU)."""
    out = a.detach().to(dtype=like.dtype).to(like.device)[t]  # (B,)
    return out.reshape(-1, *([1] * (like.ndim - 1)))  # (B, 1, 1, 1)


def _randn_like(x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def prior_bpd(x0: Tensor, alpha_bar_T: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x0) || N(0, I)) in bits/dim, (B,); ``alpha_bar_T`` a scalar tensor."""
    ab = alpha_bar_T.to(x0)
    # DDPM eq. 4: q(x_T | x0) = N(sqrt(alpha_bar_T) x0, (1 - alpha_bar_T) I)
    kl = normal_kl(ab.sqrt() * x0, torch.log1p(-ab), torch.zeros_like(x0), torch.zeros_like(x0))
    return kl.flatten(1).mean(dim=1) / math.log(2.0)  # (B,)


def step_bpd(
    model_fn: ModelFn,
    x0: Tensor,
    t: Tensor,
    schedule: Mapping[str, Tensor],
    prediction: Prediction,
    log_variance: Tensor,
    clip_denoised: bool = True,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """One term of the bound per example: L_0 where t = 0, L_t elsewhere, in bits/dim, (B,).

    Args:
        model_fn: the network as ``model_fn(x_t, t)``.
        x0: (B, C, H, W) data on the 8-bit grid in [-1, 1].
        t: (B,) int64 step indices in 0..T-1 (may differ between examples).
        schedule: ``schedules.schedule_tensors`` output (or the module's buffers of the same names).
        prediction: what ``model_fn`` predicts.
        log_variance: (T,) ``reverse_log_variance``.
        clip_denoised: clip the predicted x0 to [-1, 1] before the posterior mean.
        generator: source of the forward-process noise.
    """
    t = t.to(x0.device)
    x_t = q_sample(x0, t, _randn_like(x0, generator), schedule["alpha_bar"].to(x0.dtype))  # (B, C, H, W)
    model_out = model_fn(x_t, t)  # (B, C, H, W)
    if model_out.shape != x0.shape:
        raise ValueError(
            f"model_fn returned shape {tuple(model_out.shape)} for x_t of shape {tuple(x0.shape)}; "
            "a diffusion model must return one value per input element"
        )
    x0_pred, _ = to_x0_eps(prediction, model_out.to(x0), x_t, _gather(schedule["alpha_bar"], t, x0))
    if clip_denoised:
        x0_pred = x0_pred.clamp(-1.0, 1.0)
    coef1 = _gather(schedule["posterior_mean_coef1"], t, x0)  # (B, 1, 1, 1)
    coef2 = _gather(schedule["posterior_mean_coef2"], t, x0)
    # DDPM eq. 7: mu tilde_t(x_t, x0) = coef1 x0 + coef2 x_t, for the true x0 and for the prediction
    true_mean = coef1 * x0 + coef2 * x_t  # (B, C, H, W)
    model_mean = coef1 * x0_pred + coef2 * x_t
    true_log_var = _gather(schedule["posterior_log_variance_clipped"], t, x0)
    model_log_var = _gather(log_variance, t, x0)
    # DDPM eq. 5, L_{t-1}: KL between two Gaussians
    kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var).flatten(1).mean(dim=1)  # (B,)
    # DDPM sec. 3.3, eq. 13, L_0: discretised Gaussian decoder (at index 0 coef1 = 1, coef2 = 0)
    decoder_nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)
    decoder_nll = decoder_nll.flatten(1).mean(dim=1)  # (B,)
    return torch.where(t == 0, decoder_nll, kl) / math.log(2.0)  # (B,)


@torch.no_grad()
def vlb_terms(
    model_fn: ModelFn,
    x0: Tensor,
    schedule: Mapping[str, Tensor],
    prediction: Prediction = "eps",
    *,
    variance: Literal["beta", "beta_tilde"] = "beta",
    clip_denoised: bool = True,
    timesteps: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> dict[str, Tensor]:
    """The DDPM bound (eq. 5) in bits/dim per example: exact, or unbiased with k sampled steps.

    Args:
        model_fn: the network as ``model_fn(x_t (B, C, H, W), t (B,) int64) -> output``; put it in
            eval mode first.
        x0: (B, C, H, W) data on the 8-bit grid k / 127.5 - 1.
        schedule: ``schedules.schedule_tensors(betas)`` (float64) or the module's float32 buffers of
            the same names (``SCHEDULE_KEYS`` are read).
        prediction: what ``model_fn`` predicts: "eps", "x0" or "v".
        variance: the reverse-process variance: "beta" (DDPM's CIFAR-10 "fixedlarge") or
            "beta_tilde" ("fixedsmall"); see ``reverse_log_variance``.
        clip_denoised: clip the predicted x0 to [-1, 1] (as the samplers and improved-diffusion's
            ``image_nll.py`` do); the bound stays valid either way.
        timesteps: None (or >= T - 1) for the exact bound, T network calls; k in 1..T-2 for the
            unbiased estimate from k random KL terms per example plus the exact decoder term
            (k + 1 calls; see the module docstring for its variance).
        generator: source of the forward-process noise and of the sampled steps.

    Returns:
        dict of (B,) tensors in bits/dim: ``prior_bpd`` (L_T), ``decoder_bpd`` (L_0), ``vb_bpd``
        (L_0 + sum of the KL terms, or its estimate) and ``total_bpd`` (prior + vb), the bound on
        the NLL of the 8-bit data. Multiply by D ln 2 for nats per example.
    """
    check_prediction(prediction)
    missing = [key for key in SCHEDULE_KEYS if key not in schedule]
    if missing:
        raise ConfigError(f"schedule lacks {', '.join(missing)}: pass schedules.schedule_tensors(betas)")
    num_timesteps = schedule["betas"].shape[0]
    if num_timesteps < 2:
        raise ConfigError(f"the variational bound needs at least 2 diffusion steps, got {num_timesteps}")
    if timesteps is not None and (
        not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps < 1
    ):
        raise ConfigError(f"timesteps must be None (exact) or a positive number of steps, got {timesteps!r}")
    x0 = x0.to(torch.promote_types(x0.dtype, torch.float32))
    B = x0.shape[0]
    log_variance = reverse_log_variance(schedule, variance)  # (T,)

    def term(t: Tensor) -> Tensor:  # (B,) indices -> (B,) bits/dim
        return step_bpd(model_fn, x0, t, schedule, prediction, log_variance, clip_denoised, generator)

    prior = prior_bpd(x0, schedule["alpha_bar"][-1])  # (B,)
    decoder = term(torch.zeros(B, dtype=torch.long))  # (B,)
    num_kl = num_timesteps - 1  # KL terms at indices 1..T-1
    if timesteps is None or timesteps >= num_kl:
        kl_sum = sum(
            (term(torch.full((B,), i, dtype=torch.long)) for i in range(num_timesteps - 1, 0, -1)),
            torch.zeros_like(prior),
        )  # (B,)
    else:
        # k distinct indices per example, uniform over 1..T-1: a random permutation's first k entries.
        keys = torch.rand(
            B, num_kl, generator=generator, device=generator.device if generator is not None else "cpu"
        )
        steps = keys.argsort(dim=1)[:, :timesteps] + 1  # (B, K) in 1..T-1
        kl_sum = sum((term(steps[:, j]) for j in range(timesteps)), torch.zeros_like(prior))  # (B,)
        kl_sum = kl_sum * (num_kl / timesteps)  # E_S[(T-1)/k sum_{t in S} L_t] = sum_t L_t
    vb = decoder + kl_sum
    return {"prior_bpd": prior, "decoder_bpd": decoder, "vb_bpd": vb, "total_bpd": prior + vb}
