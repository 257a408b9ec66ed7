"""The frozen first stage of latent diffusion: images <-> scaled latents of a KL autoencoder.

Paper: Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models" (LDM),
sec. 3 and 4.3.2: a diffusion model is trained on the latents z = scale_factor * E(x) of a frozen
autoencoder (``lit_genai.vae.autoencoder.KLAutoencoder``) and its samples are decoded by D. The
autoencoder's ``scale_factor`` (1 / std of its latents, LDM's ``scale_by_std``) gives the second
stage unit-variance data, which the noise schedules assume; ``latent_std`` checks it on real batches.

The first stage is read from a checkpoint by path (docs/architecture.md, "Autoencoders"):
``FirstStage(checkpoint, image_shape)`` holds the ``KLAutoencoder`` that
``lit_genai.pretrained.load_pretrained`` rebuilds, frozen: no gradients, always in eval mode
(``train()`` cannot switch it back), and no trainable parameters for an optimiser to collect.
A module that holds a ``FirstStage`` optimises its own network's parameters only.

Checkpoints of the second stage are self-contained in weights: the first stage is a submodule, so
its weights (and ``scale_factor`` buffer) are saved in the diffusion checkpoint, and loading that
checkpoint (``predict``, ``test``, a resumed fit) replaces the weights read from the autoencoder
file with the ones the diffusion network was trained with. The file is still read when the module
is built (it gives the architecture and the latent shape), so it must still exist at the path in
the hyperparameters (a missing one is one line). If the file changed since the fit (the
autoencoder was trained further, say), loading warns and the checkpoint's first stage wins; if its
architecture no longer fits the saved weights, loading stops with one ``ConfigError`` line.

LDM encodes a posterior sample; here ``encode`` hands out the posterior mean (the deterministic
latent of each image, as ``KLAutoencoder.encode``); with KL weight 1e-6 the two barely differ
(experiments/vae/autoencoder_mnist.yaml: posterior std ~0.01 against a latent std of ~0.7).

Shape legend: B batch, C/H/W image, c/h/w latent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lit_genai.errors import ConfigError
from lit_genai.pretrained import load_pretrained
from lit_genai.vae.autoencoder import KLAutoencoder

_TRAIN_ONE = (
    "train one with lit-genai fit --config experiments/vae/autoencoder_mnist.yaml (or a config like it)"
)


class FirstStage(nn.Module):
    """A frozen ``KLAutoencoder`` read from a checkpoint: images <-> scaled latents.

    ``encode`` and ``decode`` keep the autoencoder contract (docs/architecture.md, "Autoencoders"):
    images (B, C, H, W) in [-1, 1] <-> latents (B, c, h, w) times the autoencoder's ``scale_factor``.
    Its parameters never require gradients and it stays in eval mode whatever ``train()`` is asked
    (a parent's ``model.train()``, Lightning's after validation). Its weights belong to the state
    dict of the module holding it (see the module docstring for checkpoints).

    Args:
        checkpoint: Path of a ``KLAutoencoder`` checkpoint written by ``lit-genai fit``
            (``experiments/vae/autoencoder_mnist.yaml``) or by a ``Trainer`` of a module built in
            Python (``lit_genai.pretrained.record_network_configs``).
        image_shape: (C, H, W) of the data's images; the autoencoder must have been trained on it.
        key: The config key that named ``checkpoint``, used in the error messages.
    """

    def __init__(self, checkpoint: str, image_shape: Sequence[int], key: str = "model.autoencoder") -> None:
        super().__init__()
        self.checkpoint, self.key = str(checkpoint), key
        self.image_shape: tuple[int, int, int] = tuple(int(s) for s in image_shape)  # (C, H, W)
        where = f"{key}={checkpoint}"
        try:
            autoencoder = load_pretrained(self.checkpoint, KLAutoencoder, key)
        except ConfigError as error:
            if str(error).startswith(where):
                raise
            # KLAutoencoder's own checks (a VQ-VAE's encoder gives no log-variance, ...) name its
            # keys and their fixes; what failed is the part before the fix
            reason = str(error).split(": set ")[0]
            raise ConfigError(f"{where}: not a KL autoencoder checkpoint ({reason}); {_TRAIN_ONE}") from None
        trained_on = tuple(int(s) for s in autoencoder.sample_shape)
        if trained_on != self.image_shape:
            raise ConfigError(
                f"{where} was trained on images of shape {list(trained_on)} but the data gives "
                f"{list(self.image_shape)}: use the data it was trained on, or train an autoencoder on "
                "these images (experiments/vae/autoencoder_*.yaml)"
            )
        if not autoencoder._fixed_scale and float(autoencoder.scale_factor) == 1.0:
            rank_zero_warn(
                f"{where}: its scale_factor is 1.0, as if never estimated (it is, at each validation "
                "of the autoencoder's fit): the latents may not have unit variance; check with "
                "lit_genai.diffusion.latent.latent_std"
            )
        self.autoencoder = autoencoder  # frozen and in eval mode (load_pretrained)
        self.latent_shape: tuple[int, int, int] = tuple(int(s) for s in autoencoder.latent_shape)
        self._warned_changed = False
        self.train(False)  # this module too: Lightning saves and restores every submodule's mode

    @property
    def scale_factor(self) -> float:
        """The autoencoder's latent scale (1 / std of its unscaled latents)."""
        return float(self.autoencoder.scale_factor)

    def train(self, mode: bool = True) -> FirstStage:
        """Stay in eval mode: the first stage is frozen (no dropout, fixed normalisation statistics)."""
        return super().train(False)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] -> scaled latents (B, c, h, w): posterior mean x scale_factor."""
        return self.autoencoder.encode(x)  # (B, c, h, w)

    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents (B, c, h, w) -> images (B, C, H, W) in [-1, 1] (differentiable in z only)."""
        return self.autoencoder.decode(z)  # (B, C, H, W)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Before the autoencoder's weights are replaced by the saved ones: one line when they do not
        fit the file's architecture, a warning when the file's weights differ from the saved ones."""
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        own = self.autoencoder.state_dict()
        inner = prefix + "autoencoder."
        saved = {k[len(inner) :]: v for k, v in state_dict.items() if k.startswith(inner)}
        if not saved:
            return  # a state without the first stage (strict loading reports the missing keys)
        where = f"{self.key}={self.checkpoint}"
        wrong = sorted(set(saved) ^ set(own)) or [
            k for k in own if tuple(saved[k].shape) != tuple(own[k].shape)
        ]
        if wrong:
            raise ConfigError(
                f"{where} does not fit the first stage saved in this checkpoint (first difference: "
                f"{wrong[0]}): pass the autoencoder the diffusion model was trained with"
            )
        changed = any(not torch.equal(saved[k].to(v.device, v.dtype), v) for k, v in own.items())
        if changed and not self._warned_changed:
            self._warned_changed = True
            rank_zero_warn(
                f"{where} holds other weights than the first stage saved in this checkpoint (changed "
                "since the fit?): the checkpoint's first stage is used"
            )


def latent_std(encode: Callable[[Tensor], Tensor], batches: Iterable[Any], num_batches: int = 4) -> float:
    """The std of the latents ``encode`` gives for the images of the first ``num_batches`` batches.

    For a ``FirstStage.encode`` (scaled latents) it should be about 1; if it is s, the autoencoder's
    scale_factor should have been s times smaller: LDM's ``scale_by_std`` sets it to 1 / std of the
    unscaled latents (Rombach et al. 2022, sec. 4.3.2), i.e. ``scale_factor / s``. Each batch is an
    image tensor (B, C, H, W) in [-1, 1] or a tuple whose first element is one. The std is over all
    latent values together (LDM's ``z.flatten().std()``, unbiased), accumulated in float64.
    """
    count, total, squares = 0, 0.0, 0.0
    with torch.no_grad():
        for i, batch in enumerate(batches):
            if i >= num_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch  # (B, C, H, W)
            z = encode(x).double()  # (B, c, h, w)
            count, total, squares = count + z.numel(), total + float(z.sum()), squares + float(z.pow(2).sum())
    if count < 2:
        raise ValueError(f"latent_std: got {count} latent values from {num_batches} batches; give more")
    variance = (squares - total * total / count) / (count - 1)
    return max(variance, 0.0) ** 0.5
