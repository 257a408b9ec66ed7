"""EMA callback semantics: what is averaged, when it counts, when it is swapped, what is saved
(always the training weights), what a resumed run and predict produce, which module it follows."""

import copy

import pytest
import torch
from helpers import quiet_trainer, tiny_conditional_diffusion
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
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


def test_test_uses_the_checkpoints_average(tmp_path):
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
    assert ema._shadow is None and ema.state_dict() == {} and ema._hooks == []
    assert not torch.equal(before["0.weight"], model.net[0].weight)  # it trained ...
    assert torch.equal(model.seen_in_validation[-1], model.net[0].weight)  # ... and validated on that


class SaveInValidation(Callback):
    """Writes a checkpoint at the end of each validation epoch, while the average is swapped in.

    (Lightning runs ``ModelCheckpoint`` after the other callbacks' ``on_validation_end``, i.e. after
    the EMA callback swapped back; a user callback or ``trainer.save_checkpoint`` inside validation
    does not wait for that.)
    """

    def __init__(self, path, weights_only: bool):
        self.path, self.weights_only = path, weights_only
        self.swapped_in_at_save: list[bool] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        ema = next(cb for cb in trainer.callbacks if isinstance(cb, EMA))
        self.swapped_in_at_save.append(
            ema.swapped_in and torch.equal(pl_module.net[0].weight, ema._shadow["0.weight"])
        )
        trainer.save_checkpoint(self.path, weights_only=self.weights_only)


@pytest.mark.parametrize("weights_only", [True, False], ids=["weights_only", "full"])
def test_checkpoint_written_during_validation_holds_training_weights(tmp_path, weights_only):
    model = Regressor()
    ema = EMA(decay=0.5)
    saver = SaveInValidation(tmp_path / "during_validation.ckpt", weights_only)
    trainer = _trainer(tmp_path, [ema, saver], limit_train_batches=3)
    trainer.fit(model, _loader(), _loader())
    assert saver.swapped_in_at_save == [True]  # the save really happened under the average
    assert not torch.equal(model.net[0].weight, ema._shadow["0.weight"])  # so the two can be told apart

    saved = torch.load(saver.path, weights_only=True)["state_dict"]
    training = model.state_dict()  # validation was the last thing fit did: these are the saved weights
    assert saved.keys() == training.keys()
    for key, value in training.items():
        assert torch.equal(saved[key], value), key
    if not weights_only:
        shadow = torch.load(saver.path, weights_only=True)["callbacks"]["EMA"]["shadow"]
        assert torch.equal(shadow["0.weight"], ema._shadow["0.weight"])  # the average is saved too
    # The module's own state_dict is back to normal after the swap: it is the live tensors again.
    assert model.state_dict()["net.0.weight"].data_ptr() == model.net[0].weight.data_ptr()


class Tied(nn.Module):
    """Two layers sharing one weight, and a buffer that is not saved."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
        self.b.weight = self.a.weight
        self.register_buffer("scratch", torch.zeros(3), persistent=False)


def test_state_dict_while_swapped_in_is_the_training_weights():
    module = Tied()
    ema = EMA(decay=0.5)
    ema._module = module
    ema._ensure_shadow()
    assert ema._shadow.keys() == module.state_dict().keys()  # both tied names, not the scratch buffer
    assert ema._shadow["a.weight"] is ema._shadow["b.weight"]  # one average for the tied weight
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    training = copy.deepcopy(module.state_dict())
    ema.swap_in()
    assert torch.equal(module.a.weight, ema._shadow["a.weight"])  # the average is in the module ...
    for key, value in module.state_dict().items():  # ... but state_dict() answers with training weights
        assert torch.equal(value, training[key]), key
    copied = copy.deepcopy(module)  # a copy made now is a module of its own: its state is its weights
    assert torch.equal(copied.state_dict()["a.weight"], ema._shadow["a.weight"])
    ema.swap_out()
    for key, value in module.state_dict().items():
        assert torch.equal(value, training[key]), key
    assert module.b.weight is module.a.weight  # still tied


def test_reused_instance_averages_the_new_module(tmp_path):
    ema = EMA(decay=0.0)  # the average is the last weights: easy to check against the live module
    first, second = Regressor(), Regressor()
    _trainer(tmp_path, [ema], limit_train_batches=2, limit_val_batches=0).fit(first, _loader())
    _trainer(tmp_path, [ema], limit_train_batches=3, limit_val_batches=0).fit(second, _loader())
    for name, value in second.net.state_dict().items():
        assert torch.equal(ema._shadow[name], value), name
    assert not torch.equal(ema._shadow["0.weight"], first.net[0].weight)
    assert ema.num_updates == 3  # counted afresh: warm-up starts again for the new module


def _fit_with_checkpoints(tmp_path, max_epochs: int, ckpt_path=None) -> tuple[EMA, Regressor]:
    seed_everything(0)
    model = Regressor()
    ema = EMA(decay=0.5)
    every_epoch = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1)
    trainer = _trainer(
        tmp_path, [ema, every_epoch], limit_train_batches=3, max_epochs=max_epochs, enable_checkpointing=True
    )
    trainer.fit(model, _loader(), _loader(), ckpt_path=ckpt_path)
    return ema, model


def test_resumed_average_equals_the_uninterrupted_one(tmp_path):
    straight, straight_model = _fit_with_checkpoints(tmp_path / "straight", max_epochs=3)
    resumed, _ = _fit_with_checkpoints(
        tmp_path / "resumed", max_epochs=3, ckpt_path=tmp_path / "straight" / "epoch=0.ckpt"
    )
    assert resumed.num_updates == straight.num_updates == 9
    assert not torch.equal(straight._shadow["0.weight"], straight_model.net[0].weight)  # a real average
    assert resumed._shadow.keys() == straight._shadow.keys()
    for name, value in straight._shadow.items():
        torch.testing.assert_close(resumed._shadow[name], value, rtol=0, atol=1e-6, msg=name)


def test_predict_samples_with_the_average(tmp_path):
    module = tiny_conditional_diffusion()
    training = copy.deepcopy(module.net.state_dict())
    g = torch.Generator().manual_seed(1)
    shadow = {
        n: t + 0.05 * torch.randn(t.shape, generator=g) if t.is_floating_point() else t.clone()
        for n, t in training.items()
    }
    ema = EMA(decay=0.9)
    ema.load_state_dict({"num_updates": 1, "shadow": shadow})  # as restored from a checkpoint

    batches = [torch.arange(0, 2), torch.arange(2, 4)]  # (B,) sample indices
    trainer = _trainer(tmp_path, [ema])
    predicted = torch.cat(trainer.predict(module, DataLoader(torch.arange(4), batch_size=2)))

    averaged = copy.deepcopy(module)
    averaged.net.load_state_dict(shadow)
    expected = torch.cat([averaged.predict_step(batch) for batch in batches])
    raw = torch.cat([module.predict_step(batch) for batch in batches])
    torch.testing.assert_close(predicted, expected)
    assert not torch.allclose(predicted, raw, atol=1e-3)  # the training weights draw other samples
    for name, value in training.items():  # and they are back in the module after predict
        assert torch.equal(module.net.state_dict()[name], value), name
