"""The image pool of CycleGAN's discriminators (Shrivastava et al. 2017, sec. 2.3; Zhu et al. 2017,
sec. 4: "we update the discriminators using a history of generated images rather than the ones
produced by the latest generators ... an image buffer that stores the 50 previously created images").

The rule of the authors' code (``util/image_pool.py``), per image of a batch: while the pool holds
fewer than ``size`` images, store the new image and return it; once full, with probability 0.5
return a stored image drawn uniformly and store the new one in its place, else return the new
image. The random draws are given (``u`` uniform in [0, 1), ``slots`` in [0, size)), so the module
takes them from a world-sized draw (``paradigm.this_rank``) and a resumed run repeats them; the pool
is part of the checkpoint (``state_dict``).

Shape legend: B batch, C/H/W image, P pool size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class ImagePool:
    """A history of at most ``size`` generated images (``size`` 0: no pool, ``query`` returns its input)."""

    def __init__(self, size: int = 50) -> None:
        if size < 0:
            raise ValueError(f"ImagePool: size={size} must be >= 0")
        self.size = size
        self.images: list[Tensor] = []  # P tensors (C, H, W), detached

    def query(self, images: Tensor, u: Tensor, slots: Tensor) -> Tensor:
        """(B, C, H, W) new images, (B,) uniforms, (B,) int64 slots -> (B, C, H, W) images for D.

        Image i uses ``u[i]`` and ``slots[i]`` only when the pool is full when it arrives.
        """
        if self.size == 0:
            return images
        out = []
        for image, p, slot in zip(images.detach(), u.tolist(), slots.tolist(), strict=True):
            if len(self.images) < self.size:  # filling up: keep and return the new image
                self.images.append(image.clone())
                out.append(image)
            elif p > 0.5:  # full, heads: return an old image, keep the new one in its place
                out.append(self.images[slot].to(image.device))  # a resumed pool may sit on the CPU
                self.images[slot] = image.clone()
            else:  # full, tails: return the new image, the pool stays as it is
                out.append(image)
        return torch.stack(out)  # (B, C, H, W)

    def state_dict(self) -> dict[str, Any]:
        stacked = torch.stack(self.images).cpu() if self.images else torch.zeros(0)
        return {"size": self.size, "images": stacked}  # (P, C, H, W)

    def load_state_dict(self, state: dict[str, Any], device: torch.device | None = None) -> None:
        self.size = int(state["size"])
        images = state["images"]
        self.images = (
            [image.to(device) if device is not None else image for image in images] if images.numel() else []
        )
