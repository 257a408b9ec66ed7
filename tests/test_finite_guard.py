"""FiniteGuard: a NaN or inf loss or gradient stops training with one line before it reaches the
weights, the EMA or a checkpoint; ``skip`` steps over a few; the 16-mixed GradScaler's skips do not
count; a checkpoint holding a non-finite tensor is refused and the earlier file kept."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY_CLI_TRAINER, quiet_trainer, run_cli
from lightning.pytorch import Callback
from lightning.pytorch.plugins import MixedPrecision
from test_contract import GENERATIVE, K
from torch.utils.data import DataLoader, TensorDataset
from toys import TokenToyModel

from lit_genai.callbacks import EMA, FiniteGuard, ModelCheckpoint
from lit_genai.callbacks.finite import NonFiniteError
from lit_genai.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
NAN = float("nan")


def _images(shape: tuple[int, ...], n: int = 8) -> DataLoader:
    """Random images in [-1, 1] with labels in [0, K): the batches of the image rows."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, *shape, generator=g) * 2 - 1  # (n, C, H, W)
    return DataLoader(TensorDataset(x, torch.randint(0, K, (n,), generator=g)), batch_size=4)


def _poison(net: torch.nn.Module, trainer, step: int, only_then: bool = False, when=lambda: True) -> None:
    """Make ``net``'s training output NaN from global step ``step`` on (only at it with ``only_then``)."""

    def hook(module, args, output):
        now = trainer.global_step == step if only_then else trainer.global_step >= step
        return output * NAN if module.training and now and when() else None

    net.register_forward_hook(hook)


class Snapshots(Callback):
    """The module's parameters and the EMA average at the start and at the end of global step ``step``."""

    def __init__(self, step: int, ema: EMA) -> None:
        self.step, self.ema, self.start, self.end = step, ema, None, None

    def _take(self, pl_module) -> dict[str, torch.Tensor]:
        shadow = {f"ema.{n}": t.clone() for n, t in (self.ema._shadow or {}).items()}
        return {**{n: p.detach().clone() for n, p in pl_module.named_parameters()}, **shadow}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            self.start = self._take(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.start is not None and self.end is None:
            self.end = self._take(pl_module)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


def _finite_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path``, after asserting that its weights, optimiser states and EMA average
    are finite (ModelCheckpoint's own state holds an infinite ``kth_value`` on purpose)."""
    checkpoint = torch.load(path, weights_only=True)
    parts = [checkpoint["state_dict"], checkpoint["optimizer_states"], checkpoint["callbacks"].get("EMA")]
    floats = [t for t in _tensors(parts) if t.is_floating_point()]
    assert floats and all(torch.isfinite(t).all() for t in floats), path
    return checkpoint


def _checkpointing(folder: Path, monitor: str | None = "val/loss") -> ModelCheckpoint:
    """The command line's checkpoint settings (lit_genai/cli.py): last + best on val/loss."""
    return ModelCheckpoint(
        dirpath=folder,
        monitor=monitor,
        save_last=True,
        save_top_k=1,
        filename="best-{epoch}-{step}",
        enable_version_counter=False,
    )


@pytest.mark.parametrize("save_on_exception", [False, True])
def test_a_nan_loss_at_step_k_stops_before_the_weights_ema_or_checkpoints_see_it(save_on_exception, tmp_path):
    k = 5  # two batches an epoch: validation and checkpoints at steps 2 and 4, the NaN in the third epoch
    model, _ = GENERATIVE["diffusion-unet"][1](None)
    ema = EMA(decay=0.9)
    snapshots = Snapshots(k, ema)
    checkpoints = _checkpointing(tmp_path / "checkpoints")
    checkpoints.save_on_exception = save_on_exception
    trainer = quiet_trainer(
        tmp_path,
        [FiniteGuard(), ema, snapshots, checkpoints],
        enable_checkpointing=True,
        max_steps=10,
        limit_val_batches=1,
    )
    _poison(model.net, trainer, k)
    with pytest.raises(NonFiniteError) as error:
        trainer.fit(model, _images((1, 8, 8)), _images((1, 8, 8)))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"training stopped at step {k}: train/loss=nan"), message
    # Nothing was stepped with the NaN: weights and EMA are those of the start of step k, and finite.
    after = snapshots._take(model)
    assert after.keys() == snapshots.start.keys()
    for name, value in after.items():
        assert torch.isfinite(value).all() and torch.equal(value, snapshots.start[name]), name
    # last.ckpt and the best checkpoint: finite and from before step k; last.ckpt not written after the
    # error, even with save_on_exception (whose own file holds the finite state at the start of step k).
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    exception_file = f"best-epoch=2-step={k}.ckpt"
    if save_on_exception:
        assert _finite_checkpoint(tmp_path / "checkpoints" / exception_file)["global_step"] == k
        files.remove(exception_file)
    assert len(files) == 2 and files[0].startswith("best-") and files[1] == "last.ckpt", files
    for name in files:
        checkpoint = _finite_checkpoint(tmp_path / "checkpoints" / name)
        assert checkpoint["global_step"] < k
        assert checkpoint["callbacks"]["EMA"]["shadow"]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


def test_skip_drops_one_bad_step_and_training_goes_on(tmp_path):
    k = 2
    model, _ = GENERATIVE["diffusion-unet"][1](None)
    ema = EMA(decay=0.9)
    guard, snapshots = FiniteGuard(skip=1), Snapshots(k, ema)
    trainer = quiet_trainer(tmp_path, [guard, ema, snapshots], max_steps=4, limit_val_batches=0)
    _poison(model.net, trainer, k, only_then=True)
    with pytest.warns(UserWarning, match=f"finite: skipped step {k}: train/loss=nan") as warnings:
        trainer.fit(model, _images((1, 8, 8)))
    assert len([w for w in warnings if "finite: skipped" in str(w.message)]) == 1  # warned once
    assert trainer.global_step == 4 and guard.skipped == 1
    # Step k moved no weight (the EMA, following every optimiser step, only moved towards them).
    for name, value in snapshots.end.items():
        if not name.startswith("ema."):
            assert torch.equal(value, snapshots.start[name]), name
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(t).all() for t in ema._shadow.values())
    assert guard.state_dict() == {"skipped": 1}


@pytest.mark.parametrize("player", ["net_d", "net_g"])
def test_a_nan_in_one_gan_player_names_it_and_keeps_both_finite(player, tmp_path):
    k = 4  # global steps count both players: D steps at even, G at odd steps
    model, _ = GENERATIVE["gan-dcgan"][1](None)
    ema = EMA(decay=0.9)
    snapshots = Snapshots(k, ema)
    trainer = quiet_trainer(
        tmp_path,
        [FiniteGuard(), ema, snapshots, _checkpointing(tmp_path / "checkpoints", monitor=None)],
        enable_checkpointing=True,
        max_steps=20,
        limit_train_batches=1,
        limit_val_batches=0,
    )
    net = getattr(model, player)
    # The generator's output is NaN only while it is trained (its own step), not in D's step.
    _poison(net, trainer, k, when=lambda: next(net.parameters()).requires_grad)
    with pytest.raises(NonFiniteError) as error:
        trainer.fit(model, _images((1, 28, 28)))
    step = k if player == "net_d" else k + 1
    assert str(error.value).startswith(
        f"training stopped at step {step}: the loss backpropagated into {player} is nan;"
    ), error.value
    for name, value in snapshots._take(model).items():
        assert torch.isfinite(value).all(), name
        if name.startswith(player):  # the poisoned player did not step
            assert torch.equal(value, snapshots.start[name]), name
    assert _finite_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] <= k


def _inf_gradient_at(model, trainer, step: int) -> None:
    """An infinite gradient for one weight at ``step``, with a finite loss (an fp16 overflow's shape)."""
    weight = next(model.net.parameters())
    weight.register_hook(lambda g: torch.full_like(g, float("inf")) if trainer.global_step == step else g)


def test_steps_the_grad_scaler_skips_are_not_counted(tmp_path):
    # fp16 autocast on CPU needs the plugin by hand: Trainer(precision="16-mixed") turns into bf16 on CPU.
    model, _ = GENERATIVE["diffusion-unet"][1](None)
    guard, scaler = FiniteGuard(), torch.amp.GradScaler("cpu")
    trainer = quiet_trainer(
        tmp_path,
        [guard],
        plugins=[MixedPrecision("16-mixed", "cpu", scaler)],
        max_steps=3,
        limit_val_batches=0,
    )
    _inf_gradient_at(model, trainer, 1)
    trainer.fit(model, _images((1, 8, 8)))
    assert trainer.global_step == 3 and guard.skipped == 0
    assert scaler.get_scale() == 2.0**15  # the scaler skipped the step and halved its scale (from 2 ** 16)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_an_infinite_gradient_without_a_scaler_names_the_parameter(tmp_path):
    model, _ = GENERATIVE["diffusion-unet"][1](None)
    trainer = quiet_trainer(tmp_path, [FiniteGuard()], max_steps=3, limit_val_batches=0)
    _inf_gradient_at(model, trainer, 1)
    name = next(n for n, _ in model.named_parameters())
    with pytest.raises(
        NonFiniteError, match=rf"^training stopped at step 1: the gradient of {name} \(net\) is inf;"
    ):
        trainer.fit(model, _images((1, 8, 8)))


@pytest.mark.parametrize("where", ["weights", "ema"])
def test_a_checkpoint_holding_a_non_finite_tensor_is_refused_and_the_earlier_file_kept(where, tmp_path):
    model, _ = GENERATIVE["diffusion-unet"][1](None)
    ema = EMA(decay=0.9)
    trainer = quiet_trainer(tmp_path, [FiniteGuard(), ema], max_steps=1, limit_val_batches=0)
    trainer.fit(model, _images((1, 8, 8)))
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    before = path.read_bytes()
    name, tensor = (
        next(iter(ema._shadow.items())) if where == "ema" else next(iter(model.net.state_dict().items()))
    )
    with torch.no_grad():
        tensor.view(-1)[0] = NAN
    key = f"callbacks['EMA']['shadow']['{name}']" if where == "ema" else f"state_dict['net.{name}']"
    with pytest.raises(NonFiniteError, match=rf"^checkpoint of step 1 not written: {re.escape(key)} is nan"):
        trainer.save_checkpoint(path)
    assert path.read_bytes() == before


class NaNTokenModel(TokenToyModel):
    """The toy token model of tests/toys.py whose loss is NaN from global step ``nan_step`` on.

    Args:
        vocab_size: Token ids are in [0, vocab_size).
        block_size: Longest context, in tokens (T).
        num_classes: Classes of the labels (0 = unconditional).
        lr: SGD learning rate.
        nan_step: The first global step with a NaN loss.
    """

    def __init__(
        self,
        vocab_size: int = 4,
        block_size: int = 4,
        num_classes: int = 0,
        lr: float = 0.1,
        nan_step: int = 3,
    ) -> None:
        super().__init__(vocab_size, block_size, num_classes, lr)
        self.nan_step = nan_step

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch) * (NAN if self.global_step >= self.nan_step else 1.0)
        self.log("train/loss", loss)
        return loss


def test_a_nan_loss_through_the_cli_is_one_line_and_last_ckpt_stays_finite(tmp_path, capsys):
    # The tiny token run of tests/test_cli.py: checkpoints at step 2 (the end of the first epoch), NaN at 3.
    (tmp_path / "token.yaml").write_text(
        yaml.safe_dump({"trainer": {**TINY_CLI_TRAINER, "default_root_dir": str(tmp_path / "run")}})
    )
    args = ["--model", "test_finite_guard.NaNTokenModel", "--data", "toys.TokenToyData"]
    assert run_cli(["fit", *args, "--config", str(tmp_path / "token.yaml")]) == 1
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("lit-genai:")] == [
        "lit-genai: error: training stopped at step 3: train/loss=nan; the step was not taken and the last "
        "checkpoints are from earlier steps: lower the learning rate or clip the gradients, or let "
        "finite.skip=N skip up to N such steps"
    ], err
    assert "Traceback" not in err
    checkpoints = tmp_path / "run" / "checkpoints"
    assert _finite_checkpoint(checkpoints / "last.ckpt")["global_step"] == 2
    assert [_finite_checkpoint(path)["global_step"] for path in checkpoints.glob("best-*.ckpt")] == [2]


@pytest.mark.slow  # the real text-demo config through the CLI: about 10 s of CPU, mostly parsing
def test_a_gpt_at_lr_1e12_through_the_cli_stops_with_one_line(tmp_path, capsys):
    tiny = {
        "model": {
            "init_args": {
                "net": {"init_args": {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16}},
                "optimizer": {"init_args": {"lr": 1.0e12}},
            }
        },
        "data": {"init_args": {"block_size": 16, "batch_size": 4, "steps_per_epoch": 2}},
        "trainer": {**TINY_CLI_TRAINER, "max_steps": 40, "default_root_dir": str(tmp_path / "run")},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    config = str(ROOT / "experiments" / "ar" / "text_demo.yaml")
    assert run_cli(["fit", "--config", config, "--config", str(tmp_path / "tiny.yaml")]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("lit-genai:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith("lit-genai: error: training stopped at step "), errors[0]
    assert "train/loss=nan" in errors[0] and "finite.skip" in errors[0]
    for path in (tmp_path / "run").rglob("*.ckpt"):  # any checkpoint written before the stop is finite
        _finite_checkpoint(path)


def test_huge_finite_gradients_are_not_mistaken_for_infinite_ones(tmp_path):
    # 1e30 squared overflows float32: the fast test (a 2-norm) fails, the exact one must let it pass.
    model, _ = GENERATIVE["diffusion-unet"][1](None)
    guard = FiniteGuard()
    trainer = quiet_trainer(tmp_path, [guard], max_steps=2, limit_val_batches=0)
    weight = next(model.net.parameters())
    weight.register_hook(lambda g: g.sign() * 1e30 if trainer.global_step == 1 else g)
    trainer.fit(model, _images((1, 8, 8)))
    assert trainer.global_step == 2 and guard.skipped == 0
    assert torch.isfinite(weight).all()


class RecordingGuard(FiniteGuard):
    """A FiniteGuard that writes its error into ``<out>/rank<r>.txt`` (forked ranks call no
    ``on_exception``: Lightning reports their errors in the launching process)."""

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        try:
            super().on_before_optimizer_step(trainer, pl_module, optimizer)
        except NonFiniteError as error:
            (self.out / f"rank{trainer.global_rank}.txt").write_text(str(error))
            raise


def test_under_ddp_every_rank_stops_when_one_rank_sees_a_nan(tmp_path):
    # Rank 0's loss is NaN by a term no gradient carries, so the all-reduced gradients stay finite: only
    # the guard's all-reduced decision stops rank 1 too (else it would wait for rank 0 in the next step).
    from datetime import timedelta

    from lightning.pytorch.strategies import DDPStrategy

    k = 2
    model, _ = GENERATIVE["diffusion-unet"][1](None)
    step = model.training_step

    def training_step(batch, batch_idx):
        loss = step(batch, batch_idx)
        return loss + NAN if model.global_rank == 0 and model.global_step == k else loss

    model.training_step = training_step
    trainer = quiet_trainer(
        tmp_path,
        [RecordingGuard(tmp_path)],
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(start_method="fork", timeout=timedelta(seconds=60)),
        max_steps=4,
        limit_val_batches=0,
    )
    with pytest.raises(Exception, match="training stopped"):
        trainer.fit(model, _images((1, 8, 8), n=16))
    assert (
        (tmp_path / "rank0.txt")
        .read_text()
        .startswith(f"training stopped at step {k}: the loss returned by training_step is nan;")
    )
    assert (
        (tmp_path / "rank1.txt")
        .read_text()
        .startswith(f"training stopped at step {k}: another rank's loss or gradients are non-finite;")
    )


def test_a_negative_skip_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"^finite.skip must be 0 or more, got -1$"):
        FiniteGuard(skip=-1)
