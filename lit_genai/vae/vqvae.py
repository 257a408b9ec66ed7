"""The VQ-VAE as a LightningModule: a discrete image tokenizer.

Paper: van den Oord et al. 2017, "Neural Discrete Representation Learning". Encoder z_e(x),
vector quantiser (``lit_genai.nn.vq``: nearest code, straight-through gradient, codebook and
commitment losses or the EMA codebook of appendix A.1, dead-code restarts) and decoder are
injected. The objective is eq. 3 with the reconstruction term as the mean squared error of images
in [-1, 1] (the Gaussian log-likelihood up to a constant, as the paper's CIFAR-10 models):

    L = ||x - D(z_q(x))||^2 + ||sg[z_e(x)] - e||^2 + beta ||z_e(x) - sg[e]||^2

each a mean over its elements. The second term is absent with the EMA codebook.

This module is a tokenizer, not a generative model: it has no ``sample()``. A prior over the token
grid (an autoregressive or masked token model) is trained afterwards on ``encode``'s ids, read
through ``lit_genai.data.tokens.ImageTokens``, and its samples are decoded with ``decode``.

Autoencoder contract (docs/architecture.md): ``encode`` -> token ids (B, h, w) int64, ``decode``
ids -> images in [-1, 1], ``reconstruct`` (straight-through, so differentiable w.r.t. x),
``per_example_loss`` (the objective above per example, codebook statistics untouched),
``latent_space = "discrete"``; ``vocab_size`` (K) and ``token_shape`` (h, w).

Shape legend: B batch, C/H/W image, D code dimension, h/w token grid, K codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lit_genai import paradigm
from lit_genai.errors import ConfigError
from lit_genai.hparams import save_plain_hyperparameters
from lit_genai.nn.vq import VectorQuantizer
from lit_genai.pretrained import record_network_configs


class VQVAE(LightningModule):
    """VQ-VAE: encoder -> vector quantiser -> decoder, trained on reconstruction + VQ losses.

    Logged: ``train/loss``, ``train/rec`` (MSE), ``train/commitment`` (||z_e - sg[e]||^2, before
    the weight beta), ``train/codebook`` (without EMA), ``train/perplexity`` and ``train/usage``
    (of the batch's code histogram: exp(entropy), share of codes used); ``val/`` and ``test/``
    ``loss``, ``mse``, ``commitment``, ``perplexity``, ``usage``.

    Args:
        encoder: Images (B, C, H, W) -> latents (B, D, h, w) (``lit_genai.nn.autoencoder.Encoder``
            with ``latent_channels: D``).
        decoder: Codes (B, D, h, w) -> images (B, C, H, W) (``lit_genai.nn.autoencoder.Decoder``).
        quantizer: The codebook (``lit_genai.nn.vq.VectorQuantizer``; its ``commitment`` is beta).
        sample_shape: (C, H, W) of one image; linked from the data module.
        optimizer: Optimiser of the encoder, decoder and (without EMA) the codebook (paper: Adam 2e-4).
        lr_scheduler: Optional LR scheduler.
    """

    latent_space = "discrete"
    network_args = ("encoder", "decoder", "quantizer")

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        quantizer: VectorQuantizer,
        sample_shape: Sequence[int] = (3, 32, 32),
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        super().__init__()
        save_plain_hyperparameters(self, objects=(*self.network_args, "optimizer", "lr_scheduler"))
        record_network_configs(self, {"encoder": encoder, "decoder": decoder, "quantizer": quantizer})
        self.encoder, self.decoder, self.quantizer = encoder, decoder, quantizer
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.num_classes = 0  # labels are not used
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        paradigm.check_net(encoder, "model.encoder", sample_shape=self.sample_shape)
        paradigm.check_net(
            decoder, "model.decoder", sample_shape=self.sample_shape, channels_attr="out_channels"
        )
        if getattr(encoder, "double_latent", False):
            raise ConfigError(
                "model.encoder.double_latent=True but the VQ-VAE quantises one latent per position: "
                "set model.encoder.init_args.double_latent: false"
            )
        D = quantizer.code_dim
        for key, net in (("encoder", encoder), ("decoder", decoder)):
            channels = getattr(net, "latent_channels", D)
            if channels != D:
                raise ConfigError(
                    f"model.{key}.latent_channels={channels} but model.quantizer.code_dim={D}: "
                    f"set model.{key}.init_args.latent_channels: {D}"
                )
        with torch.no_grad(), paradigm.eval_mode(encoder):
            latent = encoder(torch.zeros(1, *self.sample_shape))  # (1, D, h, w)
        self.token_shape: tuple[int, int] = (int(latent.shape[2]), int(latent.shape[3]))

    @property
    def vocab_size(self) -> int:
        """Number of token ids K (the codebook size)."""
        return self.quantizer.num_codes

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(h, w): the token grid of one image (the Autoencoder protocol's latent shape)."""
        return self.token_shape

    # ------------------------------------------------------------------ the autoencoder contract
    def encode(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] -> token ids (B, h, w) int64 (nearest codes)."""
        return self.quantizer(self.encoder(x), update=False).indices

    def decode(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Token ids (B, h, w) (or (B, h*w) in raster order) -> images (B, C, H, W) in [-1, 1]."""
        ids = z.reshape(z.shape[0], *self.token_shape)
        return self.decoder(self.quantizer.lookup(ids)).clamp(-1, 1)

    def reconstruct(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """decode(encode(x)) as images in [-1, 1], with straight-through gradients to x."""
        return self.decoder(self.quantizer(self.encoder(x), update=False).z_q).clamp(-1, 1)

    def per_example_loss(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """The objective (B,) on x in [-1, 1]; the codebook statistics are not updated."""
        return self._terms(x, update=False)["loss"]

    # ------------------------------------------------------------------ training
    def forward(self, x: Tensor) -> Tensor:
        """Images -> reconstructions (B, C, H, W), unclamped, through the quantiser."""
        return self.decoder(self.quantizer(self.encoder(x)).z_q)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x = batch[0]  # (B, C, H, W) in [-1, 1]; labels (or attributes and captions) unused
        terms = self._terms(x)
        names = ("loss", "rec", "commitment", "perplexity", "usage")
        for name in names + (() if self.quantizer.ema else ("codebook",)):
            self.log(f"train/{name}", terms[name].mean(), prog_bar=name in ("loss", "perplexity"))
        return terms["loss"].mean()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def configure_optimizers(self):
        return paradigm.optimizer_config(self.optimizer(self.parameters()), self.lr_scheduler)

    # ------------------------------------------------------------------ helpers
    def _terms(self, x: Tensor, update: Optional[bool] = None) -> dict[str, Tensor]:
        """Per-example losses (B,) and the batch's code statistics (scalars)."""
        vq = self.quantizer(self.encoder(x), update=update)
        rec = (self.decoder(vq.z_q) - x).pow(2).mean((1, 2, 3))  # (B,)
        return {
            "loss": rec + vq.loss,
            "rec": rec,
            "commitment": vq.commitment_loss,
            "codebook": vq.codebook_loss,
            "perplexity": vq.perplexity,
            "usage": vq.usage,
        }

    def _evaluate(self, stage: str, batch: tuple[Tensor, Tensor]) -> None:
        x = batch[0]
        terms = self._terms(x, update=False)
        values = {"loss": terms["loss"], "mse": terms["rec"], "commitment": terms["commitment"]}
        values.update(perplexity=terms["perplexity"], usage=terms["usage"])
        for name, value in values.items():
            self.log(
                f"{stage}/{name}", value.mean(), prog_bar=stage == "val" and name == "loss", sync_dist=True
            )
