"""Configuration checks of the GAN module: settings that contradict each other, networks that do not
fit the data or each other. Each raises one ``ConfigError`` line before the first step
(docs/architecture.md, "Errors").
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from lit_genai import paradigm
from lit_genai.errors import ConfigError
from lit_genai.gan import losses


def check_settings(
    loss: str,
    gradient_penalty: float,
    r1_gamma: float,
    n_critic: int,
    decay_steps: Optional[int],
    D: nn.Module,
) -> None:
    """Settings of the game: a known loss, n_critic >= 1, penalties >= 0 and not with batch norm in D."""
    losses.check_loss(loss)
    if n_critic < 1:
        raise ConfigError(
            f"model.n_critic={n_critic}: the discriminator needs at least 1 step per generator step"
        )
    if gradient_penalty < 0 or r1_gamma < 0:
        raise ConfigError(
            f"model.gradient_penalty={gradient_penalty} and model.r1_gamma={r1_gamma} must be >= 0"
        )
    if decay_steps is not None and decay_steps < 1:
        raise ConfigError(f"model.decay_steps={decay_steps} must be a positive number of generator steps")
    if (gradient_penalty > 0 or r1_gamma > 0) and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in D.modules()
    ):
        raise ConfigError(
            "model.gradient_penalty / model.r1_gamma are per-example penalties, but the discriminator uses "
            "batch norm (Gulrajani et al. 2017, sec. 4): set model.net_d.init_args.batch_norm: false"
        )


def check_nets(G: nn.Module, D: nn.Module, sample_shape: tuple[int, ...], num_classes: int) -> None:
    """Catch networks that do not fit the data or each other before the first step
    (docs/architecture.md, "Data and model")."""
    if len(sample_shape) != 3:
        raise ConfigError(f"GAN needs image data (C, H, W); the data's sample_shape is {list(sample_shape)}")
    if not hasattr(G, "latent_dim"):
        raise ConfigError(f"model.net_g ({type(G).__name__}) needs a latent_dim attribute (the size of z)")
    data = dict(sample_shape=sample_shape, num_classes=num_classes)
    paradigm.check_net(G, "model.net_g", channels_attr="out_channels", **data)
    paradigm.check_net(D, "model.net_d", channels_attr="in_channels", **data)
    g_classes, d_classes = getattr(G, "num_classes", 0), getattr(D, "num_classes", 0)
    if (g_classes > 0) != (d_classes > 0):
        raise ConfigError(
            f"model.net_g.num_classes={g_classes} but model.net_d.num_classes={d_classes}: a "
            f"class-conditional GAN needs labels in both networks (set both to {num_classes}, or both to 0)"
        )
