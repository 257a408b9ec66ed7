"""How well an attribute classifier reads real pictures: ``split_accuracy`` and the command
``python -m lit_genai.metrics.attributes accuracy CKPT``.

The ceiling of ``attr_acc`` (``lit_genai.metrics.attribute_accuracy``): the same score on real
pictures of CaptionedShapes instead of generated ones, per attribute, on the test split (seen
combinations) and on the held-out split (the data's default held-out rules: red triangles, circles on
yellow). Pictures are quantised to uint8 first, as generated ones are; ``--noise_std`` adds Gaussian
noise before, a first look at how the classifier reads pictures that are not exact renderings
(generated ones never are). No paper: a report.

Shape legend: B batch, C channels, H/W spatial, A attributes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from lit_genai.errors import LitGenAIError
from lit_genai.media import to_uint8
from lit_genai.metrics.attribute_accuracy import attribute_accuracy


@torch.no_grad()
def split_accuracy(
    extractor: Any, dataset: Any, names: Sequence[str], noise_std: float = 0.0, batch_size: int = 500
) -> dict[str, float]:
    """``{"acc": pooled, "acc_<attribute>": each}`` of an ``AttributeFeatures`` on a split of
    ``(image in [-1, 1], attrs, caption)`` items, with Gaussian noise of std ``noise_std`` added (from
    a generator seeded 0); empty for an empty split."""
    logits: dict[str, list] = {name: [] for name in names}
    asked = []
    generator = torch.Generator().manual_seed(0)
    for x, attrs, _ in DataLoader(dataset, batch_size=batch_size):
        if noise_std > 0:
            x = (x + noise_std * torch.randn(x.shape, generator=generator)).clamp(-1, 1)  # (B, C, H, W)
        for name, value in extractor.attribute_logits(to_uint8(x)).items():  # (B, K_a) each
            logits[name].append(value)
        asked.append(attrs)  # (B, A)
    if not asked:
        return {}
    return attribute_accuracy({k: torch.cat(v) for k, v in logits.items()}, torch.cat(asked), names, "acc")


def main(args: Optional[list[str]] = None) -> None:
    """``python -m lit_genai.metrics.attributes accuracy CKPT``; ``args`` default to ``sys.argv``."""
    from lit_genai.data import CaptionedShapes  # the data package imports much; only this command needs it
    from lit_genai.metrics.features import AttributeFeatures

    parser = argparse.ArgumentParser(prog="python -m lit_genai.metrics.attributes")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser(
        "accuracy", help="per-attribute accuracy on real test and held-out pictures"
    )
    command.add_argument("checkpoint")
    command.add_argument("--seed", type=int, default=0, help="seed of the CaptionedShapes pictures")
    command.add_argument(
        "--noise_std", type=float, default=0.0, help="Gaussian noise on the [-1, 1] pictures"
    )
    parsed = parser.parse_args(args)
    try:
        extractor = AttributeFeatures.from_file(parsed.checkpoint)
        # the data the heads imply: 9 heads read two shapes; the image size the classifier was trained on
        data = CaptionedShapes(
            image_size=extractor.expected_shape[-1] if len(extractor.expected_shape) == 3 else 32,
            max_shapes=2 if "shape_2" in extractor.attribute_names else 1,
            seed=parsed.seed,
        )
        data.setup()
        extractor.check_attributes(data.attribute_values)
    except LitGenAIError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    for split in ("test", "held_out"):
        dataset = getattr(data, f"{split}_set")
        scores = split_accuracy(extractor, dataset, data.attribute_names, parsed.noise_std)
        cells = "  ".join(f"{k.removeprefix('acc_')} {v:.4f}" for k, v in scores.items() if k != "acc")
        print(f"{split:>8} ({len(dataset)} pictures): acc {scores.get('acc', float('nan')):.4f}  {cells}")
