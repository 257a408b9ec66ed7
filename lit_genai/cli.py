"""The ``lit-genai`` command line: LightningCLI with the project's defaults.

    lit-genai fit      --config experiments/diffusion/mnist.yaml
    lit-genai fit      --config experiments/diffusion/mnist.yaml --ckpt_path last     # resume
    lit-genai test     --config experiments/diffusion/mnist.yaml --ckpt_path last
    lit-genai predict  --config experiments/diffusion/mnist.yaml --ckpt_path last --model.sampling_steps 50

Defaults that every experiment shares live here, so experiment files hold only the experiment:
- the run folder ``runs/<paradigm>-<config name>/`` (``trainer.default_root_dir``) holds
  ``checkpoints/`` (last + best on ``val/loss``), ``samples/`` (grids during fit), ``predictions/``,
  the resolved ``config.yaml`` and the logger's files;
- W&B is the logger, offline unless you are logged in (``wandb login``), so ``wandb sync`` can
  upload the run later;
- top-level groups ``ema``, ``samples``, ``checkpoint``, ``writer``, ``evaluation`` and ``rng`` configure the
  callbacks of the same name (e.g. ``--ema.decay 0.999``, ``--evaluation.num_samples 10000``); add
  others, e.g. EarlyStopping, under ``trainer.callbacks``;
- data-derived values (``sample_shape``, ``num_classes``) are linked from ``data`` into ``model``.
"""

from __future__ import annotations

import netrc
import os
import sys
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lit_genai.callbacks.checkpoint import ModelCheckpoint
from lit_genai.callbacks.ema import EMA
from lit_genai.callbacks.evaluation import Evaluation
from lit_genai.callbacks.lr_monitor import LearningRateLogger
from lit_genai.callbacks.rng import RNGState
from lit_genai.callbacks.samples import SampleLogger, SampleWriter, run_dir
from lit_genai.errors import LitGenAIError

DEFAULT_RUNS_DIR = "runs"


def wandb_logged_in() -> bool:
    """True when W&B has credentials (API key in the environment or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators(os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1])
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def experiment_name(config_paths: list[Any]) -> str:
    """``experiments/diffusion/mnist.yaml`` -> ``diffusion-mnist``; ``default`` without a config.

    With several ``--config`` files the first names the experiment (later ones are overrides)."""
    if not config_paths:
        return "default"
    path = Path(str(getattr(config_paths[0], "absolute", config_paths[0])))
    return f"{path.parent.name}-{path.stem}" if path.parent.name else path.stem


class ConfigSaver(SaveConfigCallback):
    """Save the resolved config as ``<run folder>/config.yaml`` (replacing an earlier run's) and
    send it to the logger, so the W&B run page shows exactly what ran."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        path = run_dir(trainer) / self.config_filename
        path.parent.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=False)
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": self.parser.dump(self.config, skip_none=False)})


class LitGenAICLI(LightningCLI):
    """LightningCLI with lit_genai's links, callback groups and run-folder defaults."""

    def __init__(self, args: Optional[list[str]] = None, **kwargs: Any) -> None:
        trainer_defaults = {
            "logger": {
                "class_path": "lightning.pytorch.loggers.WandbLogger",
                "init_args": {"project": "lit_genai", "offline": not wandb_logged_in()},
            },
            "callbacks": [LearningRateLogger(logging_interval="step")],
        }
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=ConfigSaver,
            save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
            trainer_defaults=trainer_defaults,
            auto_configure_optimizers=False,
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.sample_shape", "model.init_args.sample_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_lightning_class_args(EMA, "ema")
        parser.add_lightning_class_args(SampleLogger, "samples")
        parser.add_lightning_class_args(SampleWriter, "writer")
        parser.add_lightning_class_args(Evaluation, "evaluation")
        parser.add_lightning_class_args(RNGState, "rng")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-{epoch}-{step}",
                "checkpoint.enable_version_counter": False,  # last.ckpt is always the newest
            }
        )

    def before_instantiate_classes(self) -> None:
        """Fill in the per-experiment run folder and point the logger and checkpoints into it."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        name = experiment_name(config.get("config") or [])
        root = config.trainer.default_root_dir or os.path.join(DEFAULT_RUNS_DIR, name)
        config.trainer.default_root_dir = root
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = os.path.join(root, "checkpoints")
        loggers = config.trainer.logger
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init_args = getattr(logger, "init_args", None)
            if init_args is None:
                continue
            if init_args.get("save_dir") in (None, ".", ""):
                init_args.save_dir = root
            if "name" in init_args and init_args.get("name") in (None, "lightning_logs"):
                # W&B: the run's display name; TensorBoard/CSV: a subfolder of the run folder.
                kind = logger.class_path.rsplit(".", 1)[-1]
                init_args.name = {"TensorBoardLogger": "tensorboard", "CSVLogger": "csv"}.get(kind, name)
        if config.get("ckpt_path") == "last":
            config.ckpt_path = _find_last_checkpoint(config.checkpoint.dirpath)
        if "weights_only" in config and config.weights_only is None:
            config.weights_only = True  # checkpoints hold tensors and plain values only: load them safely


def _find_last_checkpoint(dirpath: str) -> str:
    candidates = sorted(Path(dirpath).glob("last*.ckpt"), key=os.path.getmtime)
    if not candidates:
        raise LitGenAIError(
            f"--ckpt_path last: no last.ckpt in {dirpath}; train first or pass a checkpoint path"
        )
    return str(candidates[-1])


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of ``lit-genai`` and ``python -m lit_genai``."""
    try:
        LitGenAICLI(args=args)
    except Exception as error:
        cause = _user_error(error)
        if cause is None:
            raise
        print(f"lit-genai: error: {cause}", file=sys.stderr)
        raise SystemExit(1) from None


def _user_error(error: BaseException) -> Optional[LitGenAIError]:
    """The LitGenAIError behind ``error``, if any (jsonargparse wraps errors raised in ``__init__``)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, LitGenAIError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


if __name__ == "__main__":
    main()
