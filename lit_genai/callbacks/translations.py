"""Pictures of image-to-image translation: rows of source | output | target (docs/architecture.md, "Media").

``TranslationGrid`` draws, after every n-th validation epoch and the last (``epochs.should_draw``),
the first ``num_rows`` items of the validation set through a translation module's ``translate``
(``lit_genai.translation``): for paired items (source, target, label) the row is source | output |
target; for unpaired items (a, b, ...) it is a | G(a) | F(G(a)), then b | F(b) | G(F(b)) (the output,
then the cycle's reconstruction). Grey images are shown as RGB next to coloured ones. The grid goes
to the loggers that show images (``media.log_images``, key ``translations``) and to
``translations/step_<global step>.png`` in the run folder (rank 0; named by step, as validation
may run several times an epoch).

Shape legend: N rows, C/H/W image.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from lit_genai.callbacks.epochs import should_draw
from lit_genai.callbacks.samples import run_dir
from lit_genai.media import to_uint8
from lit_genai.media.image import log_images, write_image_grid


def _rgb(x: Tensor) -> Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # (N, 3, H, W)


def translation_rows(module: Any, items: list[tuple[Tensor, ...]], unpaired: bool) -> Tensor:
    """(3 N, 3, H, W) uint8: the N items' rows of three pictures (module docstring), row-major."""
    first = torch.stack([item[0] for item in items]).to(module.device)  # (N, Cs, H, W)
    second = torch.stack([item[1] for item in items]).to(module.device)
    with torch.no_grad():
        if not unpaired:
            columns = [first, module.translate(first, "a2b"), second]
            rows = [torch.stack([_rgb(c)[i] for c in columns]) for i in range(len(items))]
        else:
            fake_b, fake_a = module.translate(first, "a2b"), module.translate(second, "b2a")
            rec_a, rec_b = module.translate(fake_b, "b2a"), module.translate(fake_a, "a2b")
            rows = [torch.stack([_rgb(c)[i] for c in (first, fake_b, rec_a)]) for i in range(len(items))]
            rows += [torch.stack([_rgb(c)[i] for c in (second, fake_a, rec_b)]) for i in range(len(items))]
    return to_uint8(torch.cat(rows)).cpu()  # (3 N or 6 N, 3, H, W)


class TranslationGrid(Callback):
    """Source | output | target rows of validation items, drawn during validation (module docstring).

    Args:
        every_n_epochs: Draw after every n-th validation epoch (and the last); 0 = never.
        num_rows: Validation items drawn (N).
    """

    def __init__(self, every_n_epochs: int = 1, num_rows: int = 8) -> None:
        self.every_n_epochs, self.num_rows = every_n_epochs, num_rows

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dataset = getattr(trainer.datamodule, "val_set", None) if trainer.datamodule is not None else None
        if (
            not should_draw(trainer, self.every_n_epochs)
            or dataset is None
            or not hasattr(pl_module, "translate")
        ):
            return
        items = [dataset[i] for i in range(min(self.num_rows, len(dataset)))]
        unpaired = len(pl_module.directions) > 1
        images = translation_rows(pl_module, items, unpaired)
        if trainer.is_global_zero:
            log_images(trainer, "translations", images, nrow=3)
            path = run_dir(trainer) / "translations" / f"step_{trainer.global_step:07d}.png"
            write_image_grid(path, images, nrow=3)
