"""Stand-in text-to-image "generators" for the attribute-accuracy tests: ``RealCaptioned`` draws,
for each caption, the real CaptionedShapes picture it describes (so a trained attribute classifier
scores about 1), or noise (``noise=True``: chance). They keep the generative-module contract
(``lit_genai.paradigm``) with ``conditions = ("text",)``, independent of the real Diffusion."""

from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from lit_genai import paradigm
from lit_genai.data import CaptionedShapes


class RealCaptioned(LightningModule):
    """Sample i is the real picture whose caption is ``cond["text"][i]`` (noise if ``noise``).

    ``asked`` keeps every list of captions ``sample`` was called with.

    Args:
        data: The CaptionedShapes whose val, test and held-out pictures are looked up by caption.
        noise: Draw uniform noise from the generators instead (a model that ignores its captions).
    """

    modality = "image"
    ema_target = None
    num_classes = 0
    conditions = ("text",)
    sampling = paradigm.NoSettings()
    sampling_settings = paradigm.sampling_settings

    def __init__(self, data: CaptionedShapes, noise: bool = False) -> None:
        super().__init__()
        data.setup()
        self.pictures = {
            caption: image
            for split in (data.val_set, data.test_set, data.held_out_set)
            for image, _, caption in split
        }
        self.noise = noise
        self.scale = nn.Parameter(torch.ones(()))  # something to train
        self.asked: list[list[str]] = []

    def sample(
        self, n: int, *, cond: Optional[dict] = None, generator: paradigm.Generators = None, **options: Any
    ) -> Tensor:
        captions = list(cond["text"]) if cond is not None else [next(iter(self.pictures))] * n
        assert len(captions) == n
        self.asked.append(captions)
        if self.noise:
            shape = (n, *next(iter(self.pictures.values())).shape)
            return (paradigm.randn(shape, generator, self.device)).clamp(-1, 1)
        return torch.stack([self.pictures[c] for c in captions]).to(self.device) * self.scale.detach()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return (self.scale - 1) ** 2 + 0 * batch[0].mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def test_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)
