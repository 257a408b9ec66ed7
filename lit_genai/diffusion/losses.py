"""Training targets, parameterisation conversions and the loss of denoising diffusion.

Implements:
    - Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models" (DDPM): eps-prediction
      and the simple loss L_simple (eq. 14).
    - Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models": x0-prediction
      as an alternative parameterisation (their code's ``ModelMeanType.START_X``).
    - Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models" (DDIM): the "predicted x0"
      (eq. 12) that every parameterisation is converted to before sampling.
    - Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models":
      v-prediction, v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 (sec. 4, appendix D).
    - Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy": min-SNR-gamma
      loss weights.
    - Jabri et al. 2022 (sigmoid schedule) lives in ``schedules.py``.

The network output is a prediction of one of three targets (``Prediction``):
    "eps": the noise eps; "x0": the clean data x0; "v": the velocity v.
with x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (DDPM eq. 4).

Shapes:
    B batch size, C/H/W image channels/height/width, T number of diffusion steps.
    alpha_bar_t is anything that broadcasts against (B, C, H, W): (B, 1, 1, 1) from
    ``schedules.extract``, or a scalar tensor.
"""

from typing import Literal, Optional, get_args

import torch
from torch import Tensor

from lit_genai.errors import ConfigError

Prediction = Literal["eps", "x0", "v"]
PREDICTIONS: tuple[str, ...] = get_args(Prediction)


def check_prediction(prediction: str) -> None:
    """Raise ``ConfigError`` (a ``ValueError``) unless ``prediction`` is one of ``PREDICTIONS``."""
    if prediction not in PREDICTIONS:
        raise ConfigError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def prediction_target(prediction: Prediction, x0: Tensor, eps: Tensor, alpha_bar_t: Tensor) -> Tensor:
    """The regression target of the network for ``prediction``.

    Args:
        x0: (B, C, H, W) clean data.
        eps: (B, C, H, W) the noise that made x_t from x0.
        alpha_bar_t: (B, 1, 1, 1) alpha_bar at each example's step.

    Returns:
        (B, C, H, W) target.
    """
    check_prediction(prediction)
    if prediction == "eps":
        # DDPM eq. 14: the network predicts eps
        return eps
    if prediction == "x0":
        return x0
    # Salimans & Ho 2022 sec. 4: v = alpha_t eps - sigma_t x0,
    # with alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t)
    return torch.sqrt(alpha_bar_t) * eps - torch.sqrt(1.0 - alpha_bar_t) * x0


def to_x0_eps(
    prediction: Prediction, model_out: Tensor, x_t: Tensor, alpha_bar_t: Tensor
) -> tuple[Tensor, Tensor]:
    """Convert a network output in any parameterisation to the pair (x0, eps).

    Args:
        model_out: (B, C, H, W) network output, a prediction of ``prediction``.
        x_t: (B, C, H, W) the noisy input the network saw.
        alpha_bar_t: (B, 1, 1, 1) or scalar alpha_bar at x_t's step.

    Returns:
        (x0, eps), each (B, C, H, W), such that x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps.
    """
    check_prediction(prediction)
    sqrt_ab = torch.sqrt(alpha_bar_t)
    sqrt_one_minus_ab = torch.sqrt(1.0 - alpha_bar_t)
    if prediction == "eps":
        eps = model_out
        # DDIM eq. 12 ("predicted x0"): x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
        x0 = (x_t - sqrt_one_minus_ab * eps) / sqrt_ab
    elif prediction == "x0":
        x0 = model_out
        # DDPM eq. 4 solved for eps: eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)
        eps = (x_t - sqrt_ab * x0) / sqrt_one_minus_ab
    else:
        v = model_out
        # Salimans & Ho 2022 sec. 4 / appendix D: x0 = alpha_t x_t - sigma_t v, eps = sigma_t x_t + alpha_t v
        x0 = sqrt_ab * x_t - sqrt_one_minus_ab * v
        eps = sqrt_one_minus_ab * x_t + sqrt_ab * v
    return x0, eps


def min_snr_weight(snr_t: Tensor, prediction: Prediction, gamma: float) -> Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023) for a loss on ``prediction``'s target.

    The weight w_t = min(snr_t, gamma) on the x0-MSE, re-expressed for each target
    (Hang et al. 2023, sec. 3.4): MSE on eps = snr_t * MSE on x0, MSE on v = (snr_t + 1) * MSE on x0.

    Args:
        snr_t: (B,) alpha_bar_t / (1 - alpha_bar_t) at each example's step.
        gamma: clamp value, > 0 (the paper uses 5).

    Returns:
        (B,) weights in ``snr_t``'s dtype.
    """
    check_prediction(prediction)
    if not gamma > 0.0:
        raise ConfigError(f"min_snr_gamma must be > 0, got {gamma}")
    # Hang et al. 2023 sec. 3.4: w_t = min(snr_t, gamma) on the x0 loss
    clamped = torch.clamp(snr_t, max=gamma)
    if prediction == "eps":
        return clamped / snr_t  # min(snr, gamma) / snr
    if prediction == "x0":
        return clamped  # min(snr, gamma)
    return clamped / (snr_t + 1.0)  # min(snr, gamma) / (snr + 1)


def diffusion_loss(
    model_out: Tensor,
    target: Tensor,
    snr_t: Optional[Tensor] = None,
    prediction: Prediction = "eps",
    min_snr_gamma: Optional[float] = None,
) -> dict[str, Tensor]:
    """Per-example diffusion loss: the MSE of the target, optionally min-SNR-gamma weighted.

    Args:
        model_out: (B, C, H, W) network output.
        target: (B, C, H, W) from ``prediction_target``.
        snr_t: (B,) (or (B, 1, 1, 1)) signal-to-noise ratio at each example's step; needed only
            with ``min_snr_gamma``.
        prediction: what ``model_out`` predicts; chooses the form of the min-SNR weight.
        min_snr_gamma: if set, weight each example by ``min_snr_weight``; None for L_simple.

    Returns:
        {"loss": (B,), "mse": (B,)}: ``mse`` is the unweighted per-example mean over C, H, W,
        ``loss`` is ``mse`` times the weight (``mse`` itself without ``min_snr_gamma``). The
        caller takes ``loss.mean()``; both are computed in at least float32.
    """
    check_prediction(prediction)
    if model_out.shape != target.shape:
        raise ValueError(
            f"model output shape {tuple(model_out.shape)} does not match target shape {tuple(target.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(model_out.dtype, target.dtype), torch.float32)
    diff = model_out.to(dtype) - target.to(dtype)  # (B, C, H, W)
    # DDPM eq. 14: L_simple = || eps - eps_theta(x_t, t) ||^2, averaged over C, H, W
    mse = diff.pow(2).flatten(1).mean(dim=1)  # (B,)
    if min_snr_gamma is None:
        return {"loss": mse, "mse": mse}
    if snr_t is None:
        raise ValueError("min_snr_gamma needs snr_t, the signal-to-noise ratio at each example's step")
    snr_t = snr_t.reshape(-1)  # (B,)
    if snr_t.shape[0] != mse.shape[0]:
        raise ValueError(f"snr_t has {snr_t.shape[0]} values for a batch of {mse.shape[0]}")
    weight = min_snr_weight(snr_t.detach().to(device=mse.device, dtype=dtype), prediction, min_snr_gamma)
    return {"loss": mse * weight, "mse": mse}
