"""EDM's preconditioned denoiser and training objective, as pure functions.

Implements Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models" (EDM). The data are noised as x = x0 + sigma n, n ~ N(0, I) (the VE form, EDM
eq. 1 with s(t) = 1), and the network F is wrapped into a denoiser (EDM eq. 7, Table 1 "Ours")

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)),
    c_skip = sigma_d^2 / (sigma^2 + sigma_d^2),   c_out = sigma sigma_d / sqrt(sigma^2 + sigma_d^2),
    c_in = 1 / sqrt(sigma^2 + sigma_d^2),           c_noise = ln(sigma) / 4,

trained on ln(sigma) ~ N(P_mean, P_std^2) (P_mean = -1.2, P_std = 1.2) with the weight
lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2 = 1 / c_out^2 on ||D(x; sigma) - x0||^2
(EDM eq. 2 and 8): the network then regresses the unit-variance target (x0 - c_skip x) / c_out with
unit weight. sigma_d = 0.5 is the standard deviation of images in [-1, 1] (EDM's choice); the
unit-variance latents of an autoencoder have sigma_d = 1.

Network time input. The networks here (``nn.UNet``, ``nn.DiT``) embed a float t on the scale of
DDPM's steps, [0, 1000), with sinusoids whose fastest frequency is 1 per unit of t. EDM feeds
c_noise itself to its own networks; here it is mapped affinely onto that scale,

    t = 1000 (4 c_noise - ln 0.002) / ln(80 / 0.002) = 1000 ln(sigma / 0.002) / ln(40000),

so that EDM's sampling range sigma in [0.002, 80] spans the embedding's usual [0, 1000] (larger t is
noisier, as in DDPM; sigma outside the range gives t outside it, where the sinusoids are defined
too). It is a fixed change of the network's input, independent of the sampling settings. A DiT needs
its default ``num_timesteps: 1000`` for t to be read on this scale.

``edm_denoiser`` turns a network into the denoiser D(x, sigma) that the solvers of ``solvers.py``
(Euler, Heun: EDM Algorithms 1 and 2; DPM-Solver++(2M)) integrate on the Karras grid (EDM eq. 5).

Shape legend: B batch, C/H/W image (or latent).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Optional, Union

import torch
from torch import Tensor

from lit_genai.diffusion.schedules import expand
from lit_genai.diffusion.solvers import Denoiser

Sigma = Union[Tensor, float]
"""A noise level: a Python float, or a (B,) tensor (one per example)."""

NetFn = Callable[[Tensor, Tensor], Tensor]
"""The network F: (c_in x (B, C, H, W), t (B,) float on the DDPM step scale) -> F (B, C, H, W)."""

SIGMA_DATA = 0.5  # EDM: the standard deviation of images in [-1, 1]
P_MEAN, P_STD = -1.2, 1.2  # EDM Table 1, "Training": ln(sigma) ~ N(P_mean, P_std^2)
TIME_SIGMA_MIN, TIME_SIGMA_MAX = 0.002, 80.0  # the sigma range mapped onto net times [0, 1000]

# ---------------------------------------------------------------------- preconditioning (Table 1)


def edm_preconditioning(sigma: Sigma, sigma_data: float = SIGMA_DATA) -> tuple[Sigma, Sigma, Sigma, Sigma]:
    """EDM Table 1 ("Ours", derived in appendix B.6): (c_skip, c_out, c_in, c_noise) at ``sigma``.

    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4, with sd = ``sigma_data``.
    Floats give floats, tensors tensors of their shape.
    """
    total = sigma**2 + sigma_data**2
    root = total**0.5
    log = torch.log(sigma) if isinstance(sigma, Tensor) else math.log(sigma)
    return sigma_data**2 / total, sigma * sigma_data / root, 1.0 / root, log / 4.0


def edm_net_time(sigma: Sigma) -> Sigma:
    """The network's time input for noise level ``sigma``: c_noise = ln(sigma) / 4 mapped affinely so
    that sigma in [0.002, 80] gives t in [0, 1000], DDPM's step scale (see the module docstring)."""
    c_noise = edm_preconditioning(sigma)[3]
    return 1000.0 * (4.0 * c_noise - math.log(TIME_SIGMA_MIN)) / math.log(TIME_SIGMA_MAX / TIME_SIGMA_MIN)


def edm_denoise(F_out: Tensor, x: Tensor, sigma: Sigma, sigma_data: float = SIGMA_DATA) -> Tensor:
    """D(x; sigma) = c_skip x + c_out F (EDM eq. 7) from the raw network output F (B, C, H, W)."""
    c_skip, c_out, _, _ = edm_preconditioning(sigma, sigma_data)
    return expand(c_skip, x) * x + expand(c_out, x) * F_out


def edm_denoiser(model_fn: NetFn, sigma_data: float = SIGMA_DATA) -> Denoiser:
    """The network F as the denoiser D(x, sigma) of the solvers in ``solvers.py`` (EDM eq. 7): F sees
    c_in x and the time ``edm_net_time(sigma)``, and its output is mixed with x by c_skip, c_out."""

    def denoise(x: Tensor, sigma: float) -> Tensor:
        sigma = float(sigma)
        _, _, c_in, _ = edm_preconditioning(sigma, sigma_data)
        t = torch.full((x.shape[0],), edm_net_time(sigma), device=x.device)  # (B,)
        return edm_denoise(model_fn(c_in * x, t).to(x.dtype), x, sigma, sigma_data)  # (B, C, H, W)

    return denoise


# ---------------------------------------------------------------------- training


def edm_add_noise(x0: Tensor, sigma: Sigma, noise: Tensor) -> Tensor:
    """x = x0 + sigma n, a draw of p(x; sigma) (EDM sec. 2, the VE form of eq. 1 with s(t) = 1);
    x0 and n (B, C, H, W), sigma a float or (B,). (B, C, H, W)."""
    return x0 + expand(sigma, x0) * noise


def log_normal_sigmas(
    n: int,
    p_mean: float = P_MEAN,
    p_std: float = P_STD,
    *,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> Tensor:
    """(n,) training noise levels, ln(sigma) ~ N(P_mean, P_std^2) (EDM Table 1, "Noise distribution")."""
    z = torch.randn(n, generator=generator, device=generator.device if generator is not None else device)
    return (p_mean + p_std * z).exp().to(device if device is not None else z.device)


def edm_loss_weight(sigma: Sigma, sigma_data: float = SIGMA_DATA) -> Sigma:
    """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2 (EDM Table 1, "Loss weighting",
    and eq. 8)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_target(x0: Tensor, x: Tensor, sigma: Sigma, sigma_data: float = SIGMA_DATA) -> Tensor:
    """The network's effective target (x0 - c_skip x) / c_out (EDM eq. 8), (B, C, H, W).

    For data of standard deviation sigma_data it has unit variance at every sigma.
    """
    c_skip, c_out, _, _ = edm_preconditioning(sigma, sigma_data)
    return (x0 - expand(c_skip, x) * x) / expand(c_out, x)


def edm_loss(
    F_out: Tensor, x0: Tensor, x: Tensor, sigma: Tensor, sigma_data: float = SIGMA_DATA
) -> dict[str, Tensor]:
    """Per-example EDM loss at noisy x = x0 + sigma n: {"loss": (B,), "mse": (B,)}.

    ``loss`` is lambda(sigma) ||D(x; sigma) - x0||^2 (EDM eq. 2 with the weight of eq. 8), computed
    as ||F - (x0 - c_skip x) / c_out||^2 (the same number, without dividing by c_out^2 at small
    sigma); ``mse`` the unweighted ||D - x0||^2. Both are means over the pixels.
    """
    dims = tuple(range(1, x0.ndim))
    loss = (F_out - edm_target(x0, x, sigma, sigma_data)).pow(2).mean(dims)  # (B,)
    mse = (edm_denoise(F_out, x, sigma, sigma_data) - x0).pow(2).mean(dims)  # (B,)
    return {"loss": loss, "mse": mse}
