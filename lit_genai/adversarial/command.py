"""The commands of adversarial evaluation: ``lit-genai robustness`` and ``python -m lit_genai.adversarial``.

- ``TrainerWithRobustness.robustness`` is the ``lit-genai robustness`` subcommand: it loads a trained
  model (with its EMA average, ``callbacks.ema.load_for_evaluation``), attacks test examples with PGD
  (Madry et al. 2018) on an objective of ``objectives.py`` (including Kos et al. 2017's targeted
  attacks), and writes and logs the robustness curve (``curves.py``, ``reports.py``).
- ``main`` is ``python -m lit_genai.adversarial compare OUT.png LABEL=robustness.json ...``: several
  curves in one picture.

Images are float in [-1, 1] (docs/architecture.md, "Batches"): an MNIST eps of 0.3 in [0, 1] units is
0.6 here. Shape legend: B batch, C/H/W image.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lit_genai.adversarial.attacks import Norm, check_norm
from lit_genai.adversarial.curves import example_rows, robustness_curve
from lit_genai.adversarial.objectives import ObjectiveName, check_objective
from lit_genai.adversarial.reports import log_curve, log_png, write_comparison, write_curve, write_examples
from lit_genai.callbacks.ema import load_for_evaluation
from lit_genai.errors import ConfigError, LitGenAIError


class TrainerWithRobustness(Trainer):
    """Lightning's ``Trainer`` plus one method, ``robustness``, which ``LightningCLI`` turns into the
    ``lit-genai robustness`` subcommand (its typed arguments become the command-line options).

    ``lit-genai`` builds every subcommand's trainer from this class (LightningCLI takes one trainer
    class); ``fit``, ``validate``, ``test`` and ``predict`` are Lightning's own, unchanged.
    """

    def robustness(
        self,
        model: LightningModule,
        datamodule: Optional[LightningDataModule] = None,
        ckpt_path: Optional[str] = None,
        eps: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.3),
        norm: Norm = "linf",
        steps: int = 10,
        step_size: Optional[float] = None,
        objective: ObjectiveName = "loss",
        num_examples: int = 500,
        seed: int = 0,
        output_dir: Optional[str] = None,
        examples_shown: int = 8,
        weights_only: Optional[bool] = None,
    ) -> list[dict[str, Any]]:
        """Attack a trained model with PGD on test examples; write and log its robustness curve.

        Loads ``ckpt_path`` (with the EMA average when the checkpoint holds one and the EMA callback
        is not disabled), attacks the first ``num_examples`` examples of the data's test set (passed
        through the module's ``prepare_inputs(x, generator)`` when it has one) for each
        radius (``robustness_curve``), writes ``robustness.json`` and ``robustness.png`` to
        ``output_dir`` with ``examples.png`` (``example_rows``), and sends them to the loggers
        (``log_curve``). Runs in this process on the trainer's first device, in float32.

        Args:
            model: The module to attack (its hyperparameters come from the checkpoint).
            datamodule: Gives the examples: ``setup("test")`` then ``test_dataloader()``.
            ckpt_path: Checkpoint to load (``last``: the run's last.ckpt). The command line requires one;
                from Python, None attacks the module as it is.
            eps: Attack radii, in the units of the data ([-1, 1] images: MNIST's 0.3 in [0, 1] is 0.6).
            norm: Ball of the attack: ``linf`` or ``l2``.
            steps: PGD steps.
            step_size: PGD step length; default 2.5 * eps / steps for each eps (Madry et al. 2018).
            objective: What the attack maximises: ``loss`` (the model's own per-example objective,
                e.g. a VAE's negative ELBO, a classifier's cross-entropy), ``reconstruction`` (MSE of
                the reconstruction to the clean input), ``latent`` / ``target_reconstruction`` (Kos et
                al. 2017: move the code / the reconstruction towards another test image's).
            num_examples: Test examples attacked (the first ones of the test loader).
            seed: Seed of the PGD random starts and of the random-noise baseline.
            output_dir: Folder of the outputs. Default: ``robustness/`` next to the checkpoint's
                ``checkpoints/`` folder (the run folder), or in the run folder without a checkpoint.
            examples_shown: Images of the first batch drawn attacked at the largest radius, in
                ``examples.png`` (rows: clean, adversarial and, for autoencoders, both reconstructions
                and the target) and in the loggers.
            weights_only: Load the checkpoint with ``torch.load(weights_only=...)``; the command line
                makes it True unless ``--weights_only false``.

        Returns:
            The curve's rows (see ``robustness_curve``).
        """
        check_objective(model, objective)
        check_norm(norm)
        if datamodule is None:
            raise ConfigError("robustness needs data for its test examples: set --data")
        if num_examples < 1:
            raise ConfigError(f"num_examples={num_examples}: attack at least one example")
        if ckpt_path is not None:
            load_for_evaluation(model, ckpt_path, self, weights_only=weights_only is not False)
        device = self.strategy.root_device
        model.to(device)
        batches = attack_examples(datamodule, num_examples, device, self)
        prepare = getattr(model, "prepare_inputs", None)
        if callable(prepare):  # e.g. a Bernoulli VAE's binarisation: attack what the model is trained on
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                batches = [(prepare(x, generator), y) for x, y in batches]
        rows = robustness_curve(
            model,
            batches,
            list(eps),
            norm=norm,
            steps=steps,
            step_size=step_size,
            objective=objective,
            seed=seed,
        )
        if output_dir is not None:
            out = Path(output_dir)
        elif ckpt_path is not None:
            out = Path(ckpt_path).resolve().parent.parent / "robustness"
        else:
            out = Path(self.default_root_dir) / "robustness"
        n = rows[0]["num_examples"] if rows else 0
        title = f"{type(model).__name__}: PGD-{steps} ({norm}) on {objective}, {n} test examples"
        _, png_path = write_curve(rows, out, title)
        log_curve(self, rows, png_path)
        x, y = batches[0]
        if x.ndim == 4 and max(eps) > 0:  # images: show the attack at the largest radius
            shown = example_rows(
                model,
                x[:examples_shown],
                None if y is None else y[:examples_shown],
                max(eps),
                norm=norm,
                steps=steps,
                step_size=step_size,
                objective=objective,
                seed=seed,
            )
            examples = write_examples(shown, out / "examples.png")
            log_png(self, "robustness/examples", examples, caption=f"{', '.join(shown)} (eps {max(eps):g})")
            rank_zero_info(f"Wrote {png_path}, {examples} and robustness.json to {out}")
        for logger in self.loggers:
            logger.finalize("success")
        return rows


def attack_examples(
    datamodule: LightningDataModule,
    num_examples: int,
    device: torch.device,
    trainer: Optional[Trainer] = None,
) -> list[tuple[Tensor, Optional[Tensor]]]:
    """The first ``num_examples`` (x, y) of the data's test loader, on ``device`` (the last batch cut)."""
    if trainer is not None:
        datamodule.trainer = trainer
    datamodule.prepare_data()
    datamodule.setup("test")
    batches, count = [], 0
    for batch in datamodule.test_dataloader():
        x, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
        keep = min(num_examples - count, x.shape[0])
        batches.append((x[:keep].to(device), None if y is None else y[:keep].to(device)))
        count += keep
        if count >= num_examples:
            break
    if not batches:
        raise ConfigError(
            f"the test set of {type(datamodule).__name__} is empty: robustness has nothing to attack"
        )
    return batches


def main(args: Optional[Sequence[str]] = None) -> None:
    """``python -m lit_genai.adversarial compare OUT.png LABEL=robustness.json ...``: one picture of
    several curves written by ``lit-genai robustness``.

    Args:
        args: The command-line arguments; None reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(prog="python -m lit_genai.adversarial")
    commands = parser.add_subparsers(dest="command", required=True)
    compare = commands.add_parser("compare", help="plot several robustness.json curves together")
    compare.add_argument("out", help="the PNG to write")
    compare.add_argument("curves", nargs="+", metavar="LABEL=JSON", help="a label and a robustness.json")
    compare.add_argument("--title", default="")
    parsed = parser.parse_args(args)
    curves = {}
    for item in parsed.curves:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            parser.error(f"{item!r}: give LABEL=PATH with an existing robustness.json")
        curves[label] = json.loads(Path(path).read_text())["rows"]
    try:
        print(f"wrote {write_comparison(curves, parsed.out, parsed.title)}")
    except LitGenAIError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
