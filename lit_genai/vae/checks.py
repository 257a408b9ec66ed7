"""Configuration checks of the VAE module: settings that do not go together, and an encoder and decoder
that disagree on the size of z. Each raises one ``ConfigError`` line before the first step
(docs/architecture.md, "Errors").

Shape legend: D latent_dim.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lit_genai.errors import ConfigError


def latent_dim(encoder: nn.Module, decoder: nn.Module) -> int:
    """The size of z (D): the decoder's integer ``latent_dim``, which the encoder's (if it has one) must
    match.

    Args:
        encoder: The network ``(x, y) -> (mean, logvar)``; its ``latent_dim``, if any, is checked.
        decoder: The network ``(z, y) -> raw output``; it must have an integer ``latent_dim`` >= 1.
    """
    dim = getattr(decoder, "latent_dim", None)
    if not isinstance(dim, int) or dim < 1:
        raise ConfigError(
            f"model.decoder ({type(decoder).__name__}) needs an integer latent_dim attribute (the size "
            "of z); use a decoder from lit_genai.nn.vae"
        )
    enc = getattr(encoder, "latent_dim", dim)
    if enc != dim:
        raise ConfigError(
            f"model.encoder.latent_dim={enc} but model.decoder.latent_dim={dim}: set "
            f"model.encoder.init_args.latent_dim: {dim}"
        )
    return dim


def check_args(hp: Any) -> None:
    """One-line errors for settings that do not go together.

    Args:
        hp: The VAE's saved hyperparameters (``self.hparams``: attribute and item access), with
            ``binarization``, ``likelihood``, ``gaussian_std``, ``free_bits``, ``objective``, ``beta``,
            ``adversarial_eps``, ``train_samples`` and ``adversarial_steps``.
    """
    if hp.binarization is not None and hp.likelihood != "bernoulli":
        raise ConfigError(
            f"model.init_args.binarization={hp.binarization} applies to likelihood 'bernoulli' only "
            f"(likelihood is {hp.likelihood!r}): remove it"
        )
    if hp.gaussian_std is not None and (hp.likelihood != "gaussian" or not hp.gaussian_std > 0):
        raise ConfigError(
            f"model.init_args.gaussian_std={hp.gaussian_std} must be > 0 and needs likelihood 'gaussian' "
            "(None learns the scale)"
        )
    if hp.free_bits > 0 and hp.objective == "iwae":
        raise ConfigError("model.init_args.free_bits works with objective 'elbo' only: set it to 0")
    for name in ("beta", "free_bits", "adversarial_eps"):
        if hp[name] < 0:
            raise ConfigError(f"model.init_args.{name}={hp[name]} must be >= 0")
    for name in ("train_samples", "adversarial_steps"):
        if hp[name] < 1:
            raise ConfigError(f"model.init_args.{name}={hp[name]} must be >= 1")
