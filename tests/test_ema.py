"""EMA callback semantics: what is averaged, when it counts, when it is swapped, what is saved."""

import copy

import pytest
import torch
from helpers import quiet_trainer
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_genai.callbacks.ema import EMA
from lit_genai.errors import ConfigError


def _loader(n: int = 32) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)), batch_size=8
    )


class Regressor(LightningModule):
    """A net (averaged) beside a head that is not, like a GAN's generator and discriminator."""

    ema_target = "net"

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
        self.other = nn.Linear(4, 1)
        self.seen_in_validation: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return ((self.net(x) - y) ** 2).mean() + ((self.other(x) - y) ** 2).mean()

    def validation_step(self, batch, batch_idx):
        self.seen_in_validation.append(self.net[0].weight.detach().clone())
        self.log("val/loss", ((self.net(batch[0]) - batch[1]) ** 2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class TwoPlayer(LightningModule):
    """Manual optimisation with two optimisers: `net` steps once per batch, `other` twice."""

    ema_target = "net"

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.net = nn.Linear(4, 1)
        self.other = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt_net, opt_other = self.optimizers()
        for _ in range(2):
            with self.toggled_optimizer(opt_other):
                opt_other.zero_grad()
                self.manual_backward(((self.other(x) - y) ** 2).mean())
                opt_other.step()
        with self.toggled_optimizer(opt_net):
            opt_net.zero_grad()
            self.manual_backward(((self.net(x) - y) ** 2).mean())
            opt_net.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.1), torch.optim.SGD(
            self.other.parameters(), lr=0.1
        )


def _trainer(tmp_path, callbacks, **kwargs) -> Trainer:
    return quiet_trainer(tmp_path, callbacks, **{"max_epochs": 1, "limit_val_batches": 1, **kwargs})


def test_update_is_the_exponential_average():
    module = nn.Linear(1, 1, bias=False)
    ema = EMA(decay=0.9)
    ema._module = module
    with torch.no_grad():
        module.weight.fill_(0.0)
    ema._ensure_shadow()
    with torch.no_grad():
        module.weight.fill_(1.0)
    ema.update()
    ema.update()
    # 0 -> 0.1 -> 0.19 towards a constant 1
    assert ema._shadow["weight"].item() == pytest.approx(0.19)
    assert ema.num_updates == 2


def test_half_life_and_warmup_decay():
    assert EMA(half_life=10).current_decay() ** 10 == pytest.approx(0.5)
    ema = EMA(decay=0.9999, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    ema.num_updates = 10_000_000
    assert ema.current_decay() == pytest.approx(0.9999)


def test_only_target_is_averaged_and_swapped_for_validation(tmp_path):
    model = Regressor()
    ema = EMA(decay=0.5)
    trainer = _trainer(tmp_path, [ema], limit_train_batches=3)
    trainer.fit(model, _loader(), _loader())
    assert set(ema._shadow) == set(model.net.state_dict())  # the head `other` is not averaged
    # Validation ran on the average, and training weights came back afterwards.
    assert torch.equal(model.seen_in_validation[-1], ema._shadow["0.weight"])
    assert not torch.equal(model.net[0].weight, ema._shadow["0.weight"])
    assert not ema.swapped_in
    # Buffers (BatchNorm statistics) are copied, not averaged.
    assert torch.equal(ema._shadow["1.running_mean"], model.net[1].running_mean)


def test_counts_steps_of_the_target_not_global_step(tmp_path):
    model = TwoPlayer()
    ema = EMA(decay=0.9)
    trainer = _trainer(tmp_path, [ema], limit_train_batches=4, limit_val_batches=0)
    trainer.fit(model, _loader())
    assert trainer.global_step == 12  # Lightning counts every optimiser step: 4 x (2 + 1)
    assert ema.num_updates == 4  # the target stepped once per batch


def test_accumulated_gradients_count_optimiser_steps(tmp_path):
    ema = EMA(decay=0.9)
    trainer = _trainer(tmp_path, [ema], limit_train_batches=4, accumulate_grad_batches=2, limit_val_batches=0)
    trainer.fit(Regressor(), _loader())
    assert ema.num_updates == 2


def test_checkpoint_holds_training_weights_and_ema_round_trips(tmp_path):
    model = Regressor()
    ema = EMA(decay=0.5)
    trainer = _trainer(tmp_path, [ema], limit_train_batches=3)
    trainer.fit(model, _loader(), _loader())

    # A checkpoint written while the average is swapped in still stores the training weights.
    ema.swap_in()
    path = tmp_path / "during_validation.ckpt"
    trainer.save_checkpoint(path)
    ema.swap_out()
    checkpoint = torch.load(path, weights_only=True)
    assert torch.equal(checkpoint["state_dict"]["net.0.weight"], model.net[0].weight)
    assert torch.equal(checkpoint["callbacks"]["EMA"]["shadow"]["0.weight"], ema._shadow["0.weight"])

    # Resuming restores the average and its step count, then keeps counting.
    resumed = EMA(decay=0.5)
    trainer2 = _trainer(tmp_path, [resumed], limit_train_batches=3, max_epochs=2)
    trainer2.fit(Regressor(), _loader(), _loader(), ckpt_path=path)
    assert resumed.num_updates == ema.num_updates + 3


def test_test_and_predict_use_the_checkpoints_average(tmp_path):
    model = Regressor()
    ema = EMA(decay=0.5)
    trainer = _trainer(tmp_path, [ema], limit_train_batches=3)
    trainer.fit(model, _loader(), _loader())
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    expected = ema._shadow["0.weight"].clone()

    fresh = Regressor()
    seen = []
    fresh.test_step = lambda batch, batch_idx: seen.append(fresh.net[0].weight.detach().clone())
    trainer = _trainer(tmp_path, [EMA(decay=0.5)])
    trainer.test(fresh, _loader(), ckpt_path=path, verbose=False)
    assert torch.equal(seen[0], expected)
    assert not torch.equal(fresh.net[0].weight, expected)  # swapped back after test


def test_bad_target_is_one_clear_error(tmp_path):
    trainer = _trainer(tmp_path, [EMA(target="generator")], limit_train_batches=1)
    with pytest.raises(ConfigError, match="ema.target='generator'"):
        trainer.fit(Regressor(), _loader())


def test_disabled_does_nothing(tmp_path):
    model = Regressor()
    before = copy.deepcopy(model.net.state_dict())
    ema = EMA(enabled=False)
    trainer = _trainer(tmp_path, [ema], limit_train_batches=1)
    trainer.fit(model, _loader(), _loader())
    assert ema._shadow is None and ema.state_dict() == {}
    assert not torch.equal(before["0.weight"], model.net[0].weight)
