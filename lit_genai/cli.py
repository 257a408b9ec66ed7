"""The ``lit-genai`` command line: LightningCLI with the project's defaults.

    lit-genai fit      --config experiments/diffusion/mnist.yaml
    lit-genai fit      --config experiments/diffusion/mnist.yaml --ckpt_path last     # resume
    lit-genai test     --config experiments/diffusion/mnist.yaml --ckpt_path last
    lit-genai predict  --config experiments/diffusion/mnist.yaml --ckpt_path last --model.sampling.steps 50
    lit-genai robustness --config experiments/eval/mnist_classifier.yaml --ckpt_path last --eps "[0,0.1,0.3]"

Defaults that every experiment shares live here, so experiment files hold only the experiment:
- the run folder ``runs/<paradigm>-<config name>/`` (``trainer.default_root_dir``) holds
  ``checkpoints/`` (last + best on ``val/loss``), ``samples/`` (grids during fit), ``predictions/``,
  the resolved ``config.yaml``, ``robustness/`` (``lit-genai robustness``) and the logger's files;
- W&B is the logger, offline unless you are logged in (``wandb login``), so ``wandb sync`` can
  upload the run later; an unreachable server or a refused key is one line, then offline, and a
  resumed fit logs into the same run (``lit_genai/wandb_run.py``);
- top-level groups ``ema``, ``samples``, ``checkpoint``, ``writer``, ``evaluation``, ``latents``,
  ``resume`` and ``finite`` configure the callbacks of the same name (e.g. ``--ema.decay 0.999``,
  ``--evaluation.num_samples 10000``); add others, e.g. EarlyStopping, under ``trainer.callbacks``;
- what the model must know about the data is linked from ``data`` into ``model``: each of
  ``sample_shape``, ``vocab_size``, ``block_size``, ``num_classes``, ``class_names``,
  ``vocabulary`` and ``modality`` that the data module has and the model's ``__init__`` accepts
  (``docs/architecture.md``, "Data and model"), so nobody types it twice and a token model needs
  no ``sample_shape``. The data's value is the one used; a value set for the model (in a config
  or on the command line) that differs from both the data's and the model's default stops the run
  with one line naming both;
- ``--ckpt_path`` (a file, ``last`` or ``best``) never changes the config: a checkpoint of another
  model, another architecture or other weights' shapes stops the run with one line, and training
  values (lr, warm-up, ...) are the config's, said in one line (``lit_genai/cli_checkpoint.py``).

``lit-genai robustness`` (``lit_genai.adversarial.command.TrainerWithRobustness.robustness``) attacks a
trained model with PGD on test examples (``--eps``, ``--norm``, ``--steps``, ``--objective``,
``--num_examples``) and writes ``robustness.json`` + ``robustness.png`` next to the checkpoint's folder;
the other subcommands are Lightning's. ``serve``, ``export`` and ``augment`` use a trained model and
need no Trainer: each is the ``main`` of its own module (``USE_COMMANDS``).

Library notices a user cannot act on are kept off the terminal (``quiet_library_notices``): Lightning's
litlogger advert and a deprecation inside Lightning are filtered, narrowly matched; W&B's warnings about
the ``anonymous`` setting and a missing git root are avoided at their source (``LitGenAICLI``).

Bad input ends in one line and a non-zero exit (``docs/architecture.md``, "Errors"): a parser error
(missing config file, wrong type, unknown class path, unknown key) prints ``lit-genai: error: ...``
and a pointer to ``--help`` (exit 2, as argparse); a ``LitGenAIError`` (a missing or corrupt
``--ckpt_path`` file, a network that does not fit the data, ...) prints ``lit-genai: error: ...``
(exit 1).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from lit_genai import drop_nvml_cuda_check
from lit_genai.adversarial.command import TrainerWithRobustness
from lit_genai.atomic import atomic_file
from lit_genai.callbacks.checkpoint import ModelCheckpoint
from lit_genai.callbacks.ema import EMA
from lit_genai.callbacks.evaluation import Evaluation
from lit_genai.callbacks.finite import FiniteGuard
from lit_genai.callbacks.latents import LatentGrids
from lit_genai.callbacks.lr_monitor import LearningRateLogger
from lit_genai.callbacks.resume import ResumeState
from lit_genai.callbacks.samples import SampleLogger, SampleWriter, run_dir
from lit_genai.checkpoint_io import use_atomic_checkpoints
from lit_genai.cli_checkpoint import apply_checkpoint_rule, best_checkpoint
from lit_genai.cli_checks import (
    LitGenAIParser,
    check_checkpoint,
    check_learning_rates,
    check_writable,
    hpc_checkpoint,
    is_checkpoint_file,
    last_checkpoint,
)
from lit_genai.conditions import check_conditions
from lit_genai.errors import ConfigError, LitGenAIError
from lit_genai.wandb_run import WandbRunId, prepare_wandb_run, wandb_mode

drop_nvml_cuda_check()  # after Lightning's import: see lit_genai/__init__.py

DEFAULT_RUNS_DIR = "runs"

# Data-module attributes linked into the model's init argument of the same name, when both exist.
LINKED_FROM_DATA = (
    "sample_shape",
    "source_shape",
    "vocab_size",
    "block_size",
    "num_classes",
    "class_names",
    "vocabulary",
    "prompt_template",
    "text_vocabulary",
    "attribute_names",
    "attribute_values",
    "modality",
)


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
        text = self.parser.dump(self.config, skip_none=False)
        with atomic_file(path) as out:  # whole or not at all, as the checkpoints (checkpoint_io.py)
            out.write(text.encode())
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": text})


class LitGenAICLI(LightningCLI):
    """LightningCLI with lit_genai's links, callback groups and run-folder defaults.

    Data values are linked into the model (``LINKED_FROM_DATA``) with jsonargparse instantiation
    links, which skip a link when the data module lacks the attribute or the model's ``__init__``
    lacks the argument; the data's value wins, and a different one set for the model is a
    ``ConfigError`` (checked right after instantiation, before anything runs).

    The trainer is a ``TrainerWithRobustness``: Lightning's ``Trainer`` plus the ``robustness`` method
    behind the subcommand of that name (LightningCLI builds every subcommand's trainer from one class).
    """

    _checkpoint: Optional[dict[str, Any]] = None  # the --ckpt_path file, loaded, until it is checked

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands and ``robustness``; the values are the method arguments the
        command line does not expose (the CLI passes the model and data it built)."""
        return {**LightningCLI.subcommands(), "robustness": {"model", "datamodule"}}

    def __init__(self, args: Optional[list[str]] = None, **kwargs: Any) -> None:
        trainer_defaults = {
            "logger": {
                "class_path": "lightning.pytorch.loggers.WandbLogger",
                "init_args": {"project": "lit_genai", "offline": wandb_mode() == "offline"},
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
            **{"parser_class": LitGenAIParser, "trainer_class": TrainerWithRobustness, **kwargs},
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in LINKED_FROM_DATA:
            # Skipped by jsonargparse when the data lacks the attribute or the model the argument.
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")
        parser.add_lightning_class_args(EMA, "ema")
        parser.add_lightning_class_args(SampleLogger, "samples")
        parser.add_lightning_class_args(SampleWriter, "writer")
        parser.add_lightning_class_args(Evaluation, "evaluation")
        parser.add_lightning_class_args(LatentGrids, "latents")
        parser.add_lightning_class_args(ResumeState, "resume")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(FiniteGuard, "finite")  # NaN/inf stops training (one line)
        # A group, not a default of trainer.callbacks, which a config's own callbacks list replaces.
        parser.add_lightning_class_args(WandbRunId, "wandb_run")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-{epoch}-{step}",
                "checkpoint.enable_version_counter": False,  # last.ckpt is always the newest
                "latents.every_n_epochs": 10,  # autoencoders only; a grid per epoch floods the run folder
            }
        )

    def _parse_ckpt_path(self) -> None:
        """Check the ``--ckpt_path`` file (one line per problem) before Lightning reads it, honouring
        ``--weights_only false``. Unlike Lightning's version of this hook, merge none of its
        hyperparameters into the config: the config wins (``cli_checkpoint.py``, applied after
        instantiation). ``last`` and ``best`` are resolved later, in ``before_instantiate_classes``.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        if not is_checkpoint_file(config.get("ckpt_path")):
            return
        trusted = config.get("weights_only") is False
        self._checkpoint = check_checkpoint(
            config.ckpt_path, weights_only=not trusted, resume=subcommand == "fit"
        )

    def before_instantiate_classes(self) -> None:
        """Fill in the per-experiment run folder and point the logger and checkpoints into it."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_learning_rates(config.model)  # nan, inf, <= 0: one line now, not a traceback in fit
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
            if logger.class_path.rsplit(".", 1)[-1] == "WandbLogger" and self.subcommand is not None:
                # wandb.init looks for the git repository from its folder and warns "git root ... does
                # not exist" when the folder is not there yet; from an existing one it finds the
                # project's repository (the commit goes into the run) or, outside a repository, none.
                with contextlib.suppress(OSError):  # unwritable: one line after instantiation
                    Path(init_args.get("save_dir") or init_args.get("dir") or root).mkdir(
                        parents=True, exist_ok=True
                    )
            if "name" in init_args and init_args.get("name") in (None, "lightning_logs"):
                # W&B: the run's display name; TensorBoard/CSV: a subfolder of the run folder.
                kind = logger.class_path.rsplit(".", 1)[-1]
                init_args.name = {"TensorBoardLogger": "tensorboard", "CSVLogger": "csv"}.get(kind, name)
        if self.subcommand == "robustness" and config.get("ckpt_path") is None:
            raise ConfigError(
                "robustness attacks a trained model: pass --ckpt_path (a checkpoint file, or 'last')"
            )
        if "weights_only" in config and config.weights_only is None:
            config.weights_only = True  # checkpoints hold tensors and plain values only: load them safely
        if config.get("ckpt_path") in ("last", "best", "hpc"):  # resolved here: the same checks as a file
            safe = config.get("weights_only", True) is not False
            dirpath = config.checkpoint.dirpath
            last = config.ckpt_path == "last"
            if config.ckpt_path == "hpc":  # SLURM's requeue checkpoint, in the run folder (cli_checks.py)
                config.ckpt_path = hpc_checkpoint(root)
            else:
                config.ckpt_path = last_checkpoint(dirpath) if last else best_checkpoint(dirpath, safe)
            self._checkpoint = check_checkpoint(
                config.ckpt_path, weights_only=safe, resume=self.subcommand == "fit"
            )
        for logger in loggers if isinstance(loggers, list) else [loggers]:  # lit_genai/wandb_run.py
            if self.subcommand and str(getattr(logger, "class_path", "")).endswith(".WandbLogger"):
                prepare_wandb_run(
                    logger.init_args, self.subcommand, config.get("ckpt_path"), config.get("weights_only")
                )

    def instantiate_classes(self) -> None:
        """Instantiate as LightningCLI does, then refuse model values that the data's links overrode."""
        super().instantiate_classes()
        use_atomic_checkpoints(self.trainer)  # checkpoints written whole (lit_genai/checkpoint_io.py)
        config = self.config[self.subcommand] if self.subcommand else self.config
        _check_linked_values(config.model, self.model, self.datamodule)
        check_conditions(self.model, self.datamodule)  # a condition the model needs and the data lacks
        check_writable(self.subcommand, self.trainer, self.model, self.datamodule, config.get("ckpt_path"))
        if self._checkpoint is not None:  # the config wins; another model stops (cli_checkpoint.py)
            checkpoint, self._checkpoint = self._checkpoint, None  # Lightning loads the file itself
            apply_checkpoint_rule(
                checkpoint, self.model, self.trainer, config.ckpt_path, self.subcommand, LINKED_FROM_DATA
            )
        for logger in self.trainer.loggers:
            wandb_init = getattr(logger, "_wandb_init", None) if isinstance(logger, WandbLogger) else None
            if wandb_init is not None and "anonymous" in wandb_init and wandb_init["anonymous"] is None:
                # Lightning always passes anonymous=None to wandb.init, and wandb (0.19 and later) then
                # warns that "the anonymous setting has no effect"; left unset, it says nothing.
                del wandb_init["anonymous"]


def _check_linked_values(model_config: Any, model: Any, datamodule: Any) -> None:
    """Raise a ``ConfigError`` when the model was given a value of a linked name that the data's
    value replaced (a value equal to the ``__init__`` default counts as not given). A checkpoint's
    value is compared with the data's in ``cli_checkpoint.check_against_model``."""
    init_args = getattr(model_config, "init_args", None)
    if datamodule is None or init_args is None:
        return
    parameters = inspect.signature(type(model).__init__).parameters
    for name in LINKED_FROM_DATA:
        if name not in init_args or name not in parameters or not hasattr(datamodule, name):
            continue
        given, data = _plain(init_args[name]), _plain(getattr(datamodule, name))
        if given != data and given != _plain(parameters[name].default):
            raise ConfigError(
                f"model.init_args.{name}={given} but the data ({type(datamodule).__name__}) has "
                f"{name}={data}: remove model.init_args.{name}, the command line links it from the data"
            )


def _plain(value: Any) -> Any:
    """Lists for tuples (YAML gives lists, data modules tuples), so equal shapes compare equal."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


# Notices printed at every run that name nothing a lit-genai user can change.
_LITLOGGER_TIP = "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]"
_LEAFSPEC_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class _DropLitLoggerTip(logging.Filter):
    """Drops Lightning's advert for litlogger, logged at every Trainer construction without a LitLogger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_LITLOGGER_TIP)


def quiet_library_notices() -> None:
    """Keep two library notices off the terminal, each matched by its own text and origin only.

    - Lightning's litlogger tip (an advert, logged through its ``rank_zero`` logger);
    - the ``FutureWarning`` of ``torch.utils._pytree.LeafSpec`` raised inside Lightning's own
      ``utilities/_pytree.py`` (Lightning's to fix, not the user's).
    """
    warnings.filterwarnings(
        "ignore",
        message=_LEAFSPEC_DEPRECATION,
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    # rank_zero_info logs through whichever of these two Lightning set as its logger last.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLitLoggerTip) for f in logger.filters):
            logger.addFilter(_DropLitLoggerTip())


# Commands that use a trained model rather than train one: each is ``main(args)`` of its own module,
# imported only when named (``serve`` needs the optional LitServe, ``export`` ONNX), so ``fit`` never
# imports them. LightningCLI's subcommands are Trainer methods; these need no Trainer.
USE_COMMANDS = {
    "serve": "lit_genai.serve.command",
    "export": "lit_genai.export.command",
    "augment": "lit_genai.augment.command",
}


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of ``lit-genai`` and ``python -m lit_genai``."""
    quiet_library_notices()
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv and argv[0] in USE_COMMANDS:
            importlib.import_module(USE_COMMANDS[argv[0]]).main(argv[1:])
            return
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
