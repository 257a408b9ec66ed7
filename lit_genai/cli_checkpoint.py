"""How ``--ckpt_path`` meets the run's config: the config wins, and a checkpoint of another model stops.

LightningCLI (2.6, ``LightningCLI._parse_ckpt_path``, from Lightning PR #21116 for issue #20801)
merges a checkpoint file's hyperparameters over the YAML and the command line, while ``--ckpt_path
last`` skips that merge; so ``--model.init_args.lr`` was ignored, a 16-channel config silently became
the checkpoint's 8 channels and a GAN checkpoint turned a diffusion run into a GAN (Lightning PR
#21455, still open, would make only the command line win). ``lit-genai`` merges nothing, and applies
one rule to a checkpoint file, ``last`` and ``best``, in every subcommand (fit, validate, test,
predict, robustness), right after the classes are instantiated and before anything is written:

1. another LightningModule class (the checkpoint's ``hyper_parameters["_class_path"]``) is one
   ``ConfigError`` naming both classes;
2. the run's hyperparameters (``model.hparams``, saved exactly as the checkpoint's were: the config
   after the data's links, without ``sampling`` and evaluation-only settings, ``hparams.py``) are
   compared with the checkpoint's, key by key. A differing *architecture* key (anything not in
   ``TRAINING_KEYS``: networks' ``class_path`` and ``init_args``, ``sample_shape``, ``num_classes``,
   ``num_timesteps``, schedules, ...) is one ``ConfigError`` naming the key and both values;
3. the weights: a key or a shape of the model's state dict that the checkpoint lacks (or the other
   way round) is one ``ConfigError`` naming the first such parameter and both shapes; this is also
   the class check of a checkpoint without hyperparameters;
4. a differing *training* key (``TRAINING_KEYS`` plus a module's ``training_hparams`` class attribute)
   is the config's, said in one line. ``fit`` continues the checkpoint's optimiser and LR-scheduler
   states, whose values Lightning restores over the config's, so ``ConfigOptimizerValues`` puts the
   config's back (lr, betas, weight decay, ...); a changed optimiser class or LR scheduler cannot
   continue those states and is a ``ConfigError`` in ``fit`` only.

Keys only one side has (an init argument added since) are not compared; the weights still are.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from lit_genai.errors import ConfigError, LitGenAIError

PREFIX = "model.init_args"  # where a module's hyperparameters sit in the config

# Init arguments that change how a model is trained or run, not what its weights mean: the config's
# value is used with any checkpoint (and said in one line). Every other init argument is
# architecture: an unknown one stops the run rather than change the model silently. A module adds
# its own with a ``training_hparams: tuple[str, ...]`` class attribute.
TRAINING_KEYS: tuple[str, ...] = (
    # optimisation, every paradigm
    "optimizer",
    "optimizer_g",
    "optimizer_d",
    "lr",
    "lr_scheduler",
    "lr_scheduler_interval",
    "warmup_steps",
    "weight_decay",
    "lr_decay",
    "decay_steps",
    "lr_decay_steps",
    "min_lr",
    "compile",
    "init_from",  # a fine-tune's starting weights: a checkpoint's replace them
    "seed",  # predict's seed
    # training objectives and their weights
    "p_uncond",
    "min_snr_gamma",
    "p_mean",  # EDM's training noise levels
    "p_std",
    "time_sampling",  # flow matching's training times
    "logit_mean",
    "logit_std",
    "loss",  # GAN
    "gradient_penalty",
    "r1_gamma",
    "n_critic",
    "clip_norm_g",
    "clip_norm_d",
    "beta",  # VAE
    "kl_warmup_steps",
    "free_bits",
    "train_samples",
    "objective",
    "binarization",
    "kl_weight",  # KL autoencoder
    "rec_loss",
    "scale_batches",
    "schedule",  # MaskGIT's mask schedule
    "label_smoothing",
    "max_shift",  # classifier augmentation
    "adversarial_eps",
    "adversarial_norm",
    "adversarial_steps",
    "adversarial_step_size",
)

# Training keys whose state fit continues from the checkpoint (beside every optimiser's class_path).
CONTINUED_IN_FIT: tuple[str, ...] = ("lr_scheduler",)

_MAX_VALUE = 80


class Difference(NamedTuple):
    """One hyperparameter whose value differs: ``name`` is the init argument, ``key`` the full key."""

    name: str
    key: str
    config: Any
    checkpoint: Any


def hparam_differences(config: Mapping[str, Any], checkpoint: Mapping[str, Any]) -> list[Difference]:
    """The leaves where ``config``'s hyperparameters differ from ``checkpoint``'s, in ``config``'s order.

    Keys starting with ``_`` (``_class_path``, ``_instantiator``) and keys only one side has are
    skipped; a differing ``class_path`` is one difference (its ``init_args`` are then not compared).
    """
    found = []
    for name, value in config.items():
        if not name.startswith("_") and name in checkpoint:
            found += [Difference(name, *d) for d in _compare(f"{PREFIX}.{name}", value, checkpoint[name])]
    return found


def _compare(key: str, config: Any, checkpoint: Any) -> list[tuple[str, Any, Any]]:
    if isinstance(config, Mapping) and isinstance(checkpoint, Mapping):
        if "class_path" in config and "class_path" in checkpoint:
            if not same_class(config["class_path"], checkpoint["class_path"]):
                return [(f"{key}.class_path", config["class_path"], checkpoint["class_path"])]
        return [
            d
            for k in config
            if k in checkpoint and k != "class_path"
            for d in _compare(f"{key}.{k}", config[k], checkpoint[k])
        ]
    return [] if _plain(config) == _plain(checkpoint) else [(key, config, checkpoint)]


def same_class(a: Any, b: Any) -> bool:
    """Whether two class paths name one class (``lit_genai.nn.UNet`` is ``lit_genai.nn.unet.UNet``).

    Only modules imported already are looked in: importing one a checkpoint names would run its code.
    """
    if a == b:
        return True
    found = [
        getattr(sys.modules.get(str(p).rpartition(".")[0]), str(p).rpartition(".")[2], None) for p in (a, b)
    ]
    return found[0] is not None and found[0] is found[1]


def training_keys(module_class: type) -> frozenset[str]:
    """``TRAINING_KEYS`` and the module class's own ``training_hparams``."""
    return frozenset(TRAINING_KEYS) | frozenset(getattr(module_class, "training_hparams", ()))


def check_class(config_hparams: Mapping[str, Any], checkpoint_hparams: Mapping[str, Any], where: str) -> None:
    """A ``ConfigError`` when the two ``_class_path`` differ (nothing to compare when either lacks one)."""
    ours, theirs = config_hparams.get("_class_path"), checkpoint_hparams.get("_class_path")
    if ours is not None and theirs is not None and not same_class(ours, theirs):
        raise ConfigError(
            f"{where}: the checkpoint is a {theirs}, the config is a {ours}: pass a checkpoint of "
            "this config's model, or the config the checkpoint was trained with"
        )


def check_architecture(differences: Iterable[Difference], linked: Iterable[str], where: str) -> None:
    """A ``ConfigError`` naming the first architecture difference (``linked``: names set by the data)."""
    for d in differences:
        if d.name in linked:
            raise ConfigError(
                f"{where}: {d.key} is {_show(d.config)} here (from the data) but {_show(d.checkpoint)} "
                "in the checkpoint: use the data it was trained on, or a checkpoint trained on this data"
            )
        raise ConfigError(
            f"{where}: {d.key} is {_show(d.config)} in the config but {_show(d.checkpoint)} in the "
            f"checkpoint, which changes what its weights mean: set it to {_show(d.checkpoint)}, or pass "
            "a checkpoint of this config"
        )


def check_continued_state(differences: Iterable[Difference], where: str) -> None:
    """In ``fit``: a ``ConfigError`` for a changed optimiser class or LR scheduler, whose saved
    states fit would continue."""
    for d in differences:
        if d.name in CONTINUED_IN_FIT or d.key.endswith(".class_path"):
            raise ConfigError(
                f"{where}: fit continues the checkpoint's optimiser and LR-scheduler states, so {d.key} "
                f"must stay {_show(d.checkpoint)} (the config has {_show(d.config)}): change it in "
                "validate/test/predict only, or start a new run without --ckpt_path"
            )


def check_weights(model: torch.nn.Module, state_dict: Mapping[str, Any], where: str) -> None:
    """A ``ConfigError`` naming the first parameter or buffer whose name or shape differs between
    ``model`` and the checkpoint's ``state_dict`` (names only when the model loads strictly)."""
    ours = model.state_dict()
    what = f"the config's {type(model).__module__}.{type(model).__qualname__}"
    strict = getattr(model, "strict_loading", True)
    for name, tensor in ours.items():
        if name not in state_dict:
            if strict:
                raise ConfigError(
                    f"{where}: its weights are not those of {what}: it lacks {name}; pass a checkpoint of "
                    "this config's model"
                )
            continue
        shape, saved = _shape(tensor), _shape(state_dict[name])
        if shape != saved:
            raise ConfigError(
                f"{where}: {name} is {shape} in {what} but {saved} in the checkpoint: set the "
                "network's init_args the checkpoint was trained with, or pass a checkpoint of this config"
            )
    extra = next((name for name in state_dict if name not in ours), None)
    if strict and extra is not None:
        raise ConfigError(
            f"{where}: its weights are not those of {what}: it has {extra}, which the model lacks; pass "
            "a checkpoint of this config's model"
        )


def check_against_model(
    checkpoint: Mapping[str, Any],
    model: pl.LightningModule,
    where: str,
    *,
    fit: bool = False,
    linked: Iterable[str] = (),
) -> list[Difference]:
    """The rule above for ``model`` (built from the config) and a loaded ``checkpoint``: raises a
    ``ConfigError`` for another class, an architecture difference, weights that do not fit or (in
    ``fit``) a changed optimiser class or LR scheduler; returns the training differences."""
    theirs = dict(checkpoint.get("hyper_parameters") or {})
    ours = dict(model.hparams)
    check_class(ours, theirs, where)
    differences = [d for d in hparam_differences(ours, theirs) if _takes(type(model), d.name)]
    training = training_keys(type(model))
    check_architecture([d for d in differences if d.name not in training], tuple(linked), where)
    check_weights(model, checkpoint["state_dict"], where)
    applied = [d for d in differences if d.name in training]
    if fit:
        check_continued_state(applied, where)
    return applied


def training_notice(differences: Iterable[Difference]) -> str:
    """One line saying which training values of the config replace the checkpoint's."""
    parts = [f"{d.key}={_show(d.config)} (the checkpoint had {_show(d.checkpoint)})" for d in differences]
    return "lit-genai: using the config's " + ", ".join(parts)


@rank_zero_only
def say(line: str) -> None:
    """A notice on stderr, once per run (rank zero)."""
    print(line, file=sys.stderr)


def apply_checkpoint_rule(
    checkpoint: Mapping[str, Any],
    model: pl.LightningModule,
    trainer: pl.Trainer,
    ckpt_path: str,
    subcommand: Optional[str],
    linked: Iterable[str] = (),
) -> None:
    """What the command line does with a ``--ckpt_path`` after instantiating the config's classes:
    ``check_against_model``, then one line for the training values the config changes and, in
    ``fit``, ``ConfigOptimizerValues`` in the trainer so the restored optimiser states take them."""
    where = f"--ckpt_path {ckpt_path}"
    fit = subcommand == "fit"
    applied = check_against_model(checkpoint, model, where, fit=fit, linked=linked)
    if not applied:
        return
    say(training_notice(applied))
    if fit:
        trainer.callbacks.append(ConfigOptimizerValues(checkpoint, where))


# ---------------------------------------------------------------------- fit: the config's optimiser values


class ConfigOptimizerValues(Callback):
    """Put the config's optimiser values back after Lightning restores a checkpoint's optimiser and
    LR-scheduler states in ``fit``.

    ``Optimizer.load_state_dict`` takes the saved param groups' lr, betas, weight decay, ... and
    ``LRScheduler.load_state_dict`` the saved ``base_lrs``, so a resumed run would train with the
    checkpoint's values whatever the config says. Lightning's ``Trainer._run`` builds the optimisers
    (``strategy.setup``), calls ``on_fit_start``, then restores the states (``restore_training_state``)
    before ``on_train_start``: the config's values are read in the first hook and put back in the
    second. A scheduled LR keeps its place in the schedule: it is scaled by config lr / checkpoint
    lr (exact for the warm-ups and decays here, ``LambdaLR`` factors of the initial LR).

    Args:
        checkpoint: The loaded checkpoint (its optimiser and scheduler states are compared with the
            config's, so a state fit cannot continue is one line rather than a traceback).
        where: ``--ckpt_path <file>``, for the messages.
    """

    def __init__(self, checkpoint: Mapping[str, Any], where: str) -> None:
        self.where = where
        self.saved_groups = [
            [len(g["params"]) for g in state["param_groups"]]
            for state in checkpoint.get("optimizer_states", [])
        ]
        self.saved_schedulers = [set(state) for state in checkpoint.get("lr_schedulers", [])]
        self.groups: list[list[dict[str, Any]]] = []
        self.base_lrs: list[list[Optional[list[float]]]] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        groups = [[len(g["params"]) for g in optimizer.param_groups] for optimizer in trainer.optimizers]
        if groups[: len(self.saved_groups)] != self.saved_groups[: len(groups)]:
            raise ConfigError(
                f"{self.where}: the config's optimiser parameter groups hold {groups} parameters, the "
                f"checkpoint's {self.saved_groups}, so fit cannot continue its state: keep the "
                "checkpoint's weight_decay grouping, or start a new run without --ckpt_path"
            )
        # Lightning's restore pairs schedulers with saved states as zip does (extras are left alone).
        for config, saved in zip(trainer.lr_scheduler_configs, self.saved_schedulers, strict=False):
            if set(config.scheduler.state_dict()) != saved:
                raise ConfigError(
                    f"{self.where}: the config's LR schedule ({type(config.scheduler).__name__}) is not of "
                    "the checkpoint's form, so fit cannot continue it: keep its warmup_steps and "
                    "lr_scheduler, or start a new run without --ckpt_path"
                )
        self.groups = [[_group_values(g) for g in optimizer.param_groups] for optimizer in trainer.optimizers]
        self.base_lrs = [
            [_base_lrs(s) for s in _schedulers(config.scheduler)] for config in trainer.lr_scheduler_configs
        ]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for optimizer, groups in zip(trainer.optimizers, self.groups, strict=True):
            for group, values in zip(optimizer.param_groups, groups, strict=True):
                restored_lr, restored_initial = group["lr"], group.get("initial_lr")
                group.update({k: v for k, v in values.items() if k != "lr"})
                if values.get("initial_lr") and restored_initial:  # scheduled: keep the schedule's factor
                    group["lr"] = restored_lr * values["initial_lr"] / restored_initial
                else:
                    group["lr"] = values["lr"]
        for config, base_lrs in zip(trainer.lr_scheduler_configs, self.base_lrs, strict=True):
            for scheduler, lrs in zip(_schedulers(config.scheduler), base_lrs, strict=True):
                if lrs is not None:
                    scheduler.base_lrs = list(lrs)
                if hasattr(scheduler, "_last_lr"):
                    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]


def _group_values(group: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k != "params"}


def _schedulers(scheduler: Any) -> list[Any]:
    """A scheduler and those it chains (``SequentialLR`` / ``ChainedScheduler``'s ``_schedulers``)."""
    return [scheduler, *(s for child in getattr(scheduler, "_schedulers", []) for s in _schedulers(child))]


def _base_lrs(scheduler: Any) -> Optional[list[float]]:
    lrs = getattr(scheduler, "base_lrs", None)
    return None if lrs is None else list(lrs)


# ---------------------------------------------------------------------- --ckpt_path best


def best_checkpoint(dirpath: str, weights_only: bool = True) -> str:
    """The best checkpoint that ``ModelCheckpoint`` recorded in the newest ``last*.ckpt`` of ``dirpath``.

    Lightning resolves ``best`` only from a ``ModelCheckpoint`` of the same process (a fit just run), so
    under the command line it would raise; the record in ``last.ckpt`` is that callback's own. A run
    folder moved since is looked in too (the recorded path is absolute)."""
    lasts = sorted(Path(dirpath).glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not lasts:
        raise LitGenAIError(
            f"--ckpt_path best: no last.ckpt in {dirpath} records a best checkpoint; train first or pass "
            "a checkpoint path"
        )
    try:
        checkpoint = torch.load(lasts[-1], map_location="cpu", weights_only=weights_only, mmap=True)
    except Exception as error:  # the checks of --ckpt_path <file> say why in one line
        raise LitGenAIError(
            f"--ckpt_path best: cannot read {lasts[-1]} ({type(error).__name__}); pass a checkpoint path"
        ) from None
    states = [
        s for k, s in (checkpoint.get("callbacks") or {}).items() if str(k).startswith("ModelCheckpoint")
    ]
    recorded = next((s["best_model_path"] for s in states if s.get("best_model_path")), None)
    if recorded is None:
        raise LitGenAIError(
            f"--ckpt_path best: {lasts[-1]} records no best checkpoint (is checkpoint.monitor set?); pass "
            "a checkpoint path"
        )
    for path in (Path(recorded), Path(dirpath) / Path(recorded).name):
        if path.is_file():
            return str(path)
    raise LitGenAIError(
        f"--ckpt_path best: {recorded}, recorded in {lasts[-1]}, is gone; pass a checkpoint path"
    )


# ---------------------------------------------------------------------- helpers


def _plain(value: Any) -> Any:
    """Lists for tuples (YAML gives lists, data modules tuples), so equal shapes compare equal."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _takes(module_class: type, name: str) -> bool:
    """Whether ``module_class.__init__`` takes ``name``. The command line saves every data link in the
    hyperparameters, also one the module does not take (an audio ``sample_shape`` of a ``NextToken``),
    and such a value says nothing about the weights."""
    parameters = inspect.signature(module_class.__init__).parameters
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _shape(value: Any) -> Optional[tuple[int, ...]]:
    shape = getattr(value, "shape", None)
    return None if shape is None else tuple(shape)


def _show(value: Any) -> str:
    """A value as the config would write it, on one short line."""
    if isinstance(value, float):
        text = f"{value:.12g}"
    elif isinstance(value, Mapping) and "class_path" in value:
        args = ", ".join(f"{k}={_show(v)}" for k, v in (value.get("init_args") or {}).items())
        text = f"{value['class_path']}({args})"
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_show(v) for v in value) + "]"
    else:
        text = str(value)
    text = " ".join(text.split())  # one line, whatever a string holds
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."
