"""Pictures of an autoencoder's latent space during fit: reconstructions, interpolations, traversals.

For any module keeping the ``lit_genai.paradigm.Autoencoder`` protocol (docs/architecture.md,
"Autoencoders": the VAE, the KL autoencoder, the VQ-VAE), read through that protocol's members only,
after every ``every_n_epochs``-th validation epoch and the last one (``lit_genai.callbacks.epochs``:
so under EMA weights when the EMA callback is on, and in eval mode), from the same real images each
time (``num_images`` of the first validation batches, picked by a seeded permutation and kept):

- ``reconstructions``: the originals (top row) above their reconstructions ``decode(encode(x))``;
- ``interpolations`` (continuous latents only, any latent shape): for consecutive pairs of the
  images, the original a, decodings of (1 - t) z_a + t z_b for ``interpolation_steps`` values of t
  in [0, 1] (linear, as Kingma & Welling 2014 / Bowman et al. 2016 show), then the original b;
- ``traversals`` (vector latents only, ``latent_shape`` (D,)): the first image's code with one
  latent dimension moved over [-range, +range] around its value, one row per dimension, for the
  ``traversal_dims`` dimensions whose posterior means vary most over the images (the active units
  of Burda et al. 2016, sec. 5.2; beta-VAE's traversal plots, Higgins et al. 2017).

The images' labels go to ``encode`` and ``decode`` as the protocol's ``y`` (a conditional model uses
them, the others ignore them); an interpolation row and the traversal rows use the label of their
first image. Images go through the data module's ``decode`` and ``lit_genai.media`` (W&B and
TensorBoard, keys ``latents/<kind>``) and are written as
``<run folder>/latents/<kind>_epoch=NNNN-step=NNNNNN.png``. Modules that do not keep the protocol
are skipped silently. Rank 0 draws and writes; under a sharded strategy (FSDP, DeepSpeed) every
rank runs the forward passes on rank 0's images, and rank 0 writes (``lit_genai.sharding``).

Shape legend: N images, C/H/W image, D latent dimensions, S steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from lit_genai import media, paradigm, sharding
from lit_genai.callbacks.epochs import should_draw
from lit_genai.callbacks.samples import run_dir

KINDS = ("reconstructions", "interpolations", "traversals")


class LatentGrids(Callback):
    """Reconstruction, interpolation and latent-traversal grids of an autoencoder during fit.

    Args:
        every_n_epochs: Draw the grids after every n-th validation epoch (and after the last one);
            0 turns the callback off.
        num_images: Real validation images used (the first ones of the validation data).
        interpolation_steps: Decoded points per interpolation row, endpoints included (the
            originals are shown beyond them).
        traversal_dims: Number of latent dimensions traversed (the most active ones).
        traversal_range: Each traversed dimension moves over [-range, +range] around the code's value
            (in prior standard deviations for a VAE).
        traversal_steps: Decoded points per traversal row.
        seed: Seed of the permutation that picks the images within each of the first validation
            batches (the same images in every epoch and run).
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_images: int = 8,
        interpolation_steps: int = 8,
        traversal_dims: int = 8,
        traversal_range: float = 3.0,
        traversal_steps: int = 9,
        seed: int = 0,
    ) -> None:
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.interpolation_steps = interpolation_steps
        self.traversal_dims = traversal_dims
        self.traversal_range = traversal_range
        self.traversal_steps = traversal_steps
        self.seed = seed
        self._images: Optional[Tensor] = None  # (N, C, H, W) on the CPU
        self._labels: Optional[Tensor] = None  # (N,)
        self.last_paths: dict[str, Path] = {}

    # ------------------------------------------------------------------ hooks
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.every_n_epochs <= 0 or not paradigm.is_autoencoder(pl_module) or dataloader_idx != 0:
            return
        have = 0 if self._images is None else len(self._images)
        if have >= self.num_images or not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            return
        x, y = batch  # (B, C, H, W), (B,)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed + batch_idx))
        pick = order[: self.num_images - have].to(x.device)  # (taken,)
        x, y = x[pick].detach().cpu(), y[pick].detach().cpu()
        self._images = x if self._images is None else torch.cat([self._images, x])
        self._labels = y if self._labels is None else torch.cat([self._labels, y])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not paradigm.is_autoencoder(pl_module) or not should_draw(trainer, self.every_n_epochs):
            return
        if not sharding.draws_here(trainer):
            return
        if sharding.sharded_strategy(trainer) is not None:
            # Every rank takes part in the forward passes (each gathers the sharded parameters): all
            # of them draw rank 0's images, so they make the same calls and rank 0 the same grids.
            self._images, self._labels = trainer.strategy.broadcast((self._images, self._labels))
        if self._images is not None:
            self.draw(trainer, pl_module)

    # ------------------------------------------------------------------ the grids
    @torch.no_grad()
    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Path]:
        """Make the grids of ``pl_module`` (an ``Autoencoder``); on rank 0 write and log them and
        return their paths by kind (other ranks, which draw under a sharded strategy only: {})."""
        grids = sharding.forward_outside_step(trainer, pl_module, lambda: self._grids(pl_module))
        if not trainer.is_global_zero:
            return {}
        stamp = f"epoch={trainer.current_epoch:04d}-step={trainer.global_step:06d}"
        caption = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        folder = run_dir(trainer) / "latents"
        self.last_paths = {}
        for kind, (images, nrow) in grids.items():
            decoded = media.to_media(trainer.datamodule, "image", images.clamp(-1, 1))  # uint8
            self.last_paths[kind] = media.write_image_grid(folder / f"{kind}_{stamp}.png", decoded, nrow)
            media.log_images(trainer, f"latents/{kind}", decoded, caption=caption, nrow=nrow)
        return self.last_paths

    def _grids(self, pl_module: Any) -> dict[str, tuple[Tensor, int]]:
        """kind -> (images in [-1, 1], images per row), from the kept images and labels."""
        device = pl_module.device
        x = self._images.to(device)  # (N, C, H, W)
        y = self._labels.to(device) if self._labels is not None else None  # (N,)
        continuous = pl_module.latent_space == "continuous"
        grids: dict[str, tuple[Tensor, int]] = {}
        with paradigm.eval_mode(pl_module):
            z = pl_module.encode(x, y)  # (N, ...) latents
            recon = pl_module.decode(z, y)  # (N, C, H, W)
            grids["reconstructions"] = (torch.cat([x, recon.to(x)]), len(x))
            if continuous and len(x) >= 2:
                grids["interpolations"] = self._interpolations(pl_module, x, z, y)
            if continuous and len(pl_module.latent_shape) == 1 and self.traversal_dims > 0:
                grids["traversals"] = self._traversals(pl_module, z, y)
        return grids

    def _interpolations(
        self, pl_module: Any, x: Tensor, z: Tensor, y: Optional[Tensor]
    ) -> tuple[Tensor, int]:
        """Rows [a, decode(lerp(z_a, z_b, t)) for S values of t, b] for the pairs (0, 1), (2, 3), ..."""
        steps = max(self.interpolation_steps, 2)
        t = torch.linspace(0, 1, steps, device=z.device)  # (S,)
        rows = []
        for i in range(0, len(x) - 1, 2):
            za, zb = z[i].float(), z[i + 1].float()  # latent shape (...)
            shape = (steps,) + (1,) * za.ndim
            path = (1 - t.view(shape)) * za + t.view(shape) * zb  # (S, ...)
            labels = y[i].expand(steps) if y is not None else None
            decoded = pl_module.decode(path.to(z.dtype), labels).to(x)  # (S, C, H, W)
            rows.append(torch.cat([x[i : i + 1], decoded, x[i + 1 : i + 2]]))
        return torch.cat(rows), steps + 2

    def _traversals(self, pl_module: Any, z: Tensor, y: Optional[Tensor]) -> tuple[Tensor, int]:
        """One row per most-active dimension d: z_0 with z_0[d] + v for S values v in [-range, range]."""
        steps = max(self.traversal_steps, 2)
        k = min(self.traversal_dims, z.shape[1])
        activity = z.float().var(dim=0, unbiased=False) if len(z) > 1 else torch.zeros(z.shape[1])  # (D,)
        dims = torch.argsort(activity.to(z.device), descending=True)[:k]  # (k,)
        offsets = torch.linspace(-self.traversal_range, self.traversal_range, steps, device=z.device)
        codes = z[0].expand(k, steps, z.shape[1]).clone()  # (k, S, D)
        rows = torch.arange(k, device=z.device)
        codes[rows, :, dims] = z[0, dims][:, None] + offsets  # (k, S)
        labels = y[0].expand(k * steps) if y is not None else None
        images = pl_module.decode(codes.view(k * steps, -1), labels)  # (k S, C, H, W)
        return images, steps
