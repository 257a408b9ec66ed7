"""The GAN LightningModule: who steps when, what counts, mixed precision, DDP, resume, the CLI."""

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from helpers import TINY_CLI_TRAINER, quiet_trainer
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.strategies import DDPStrategy

from lit_genai import paradigm
from lit_genai.callbacks.checkpoint import ModelCheckpoint
from lit_genai.callbacks.ema import EMA
from lit_genai.callbacks.resume import ResumeState
from lit_genai.cli import main
from lit_genai.data import MNIST5k
from lit_genai.errors import ConfigError
from lit_genai.gan.checks import check_nets
from lit_genai.gan.module import GAN, GANSampling
from lit_genai.gan.sampling import truncate
from lit_genai.nn.dcgan import DCGANDiscriminator, DCGANGenerator

ROOT = Path(__file__).resolve().parents[1]
DCGAN_MNIST = str(ROOT / "experiments" / "gan" / "dcgan_mnist.yaml")
LR = 2e-3


def _gan(num_classes: int = 10, batch_norm: bool = True, **kwargs) -> GAN:
    """A tiny class-conditional DCGAN for 28x28 MNIST (a few thousand parameters)."""
    G = DCGANGenerator(latent_dim=8, out_channels=1, image_size=28, base_channels=8, num_classes=num_classes)
    D = DCGANDiscriminator(
        in_channels=1, image_size=28, base_channels=8, num_classes=num_classes, batch_norm=batch_norm
    )
    adam = lambda params: torch.optim.Adam(params, lr=LR, betas=(0.5, 0.999))
    kwargs = {"optimizer_g": adam, "optimizer_d": adam, **kwargs}
    return GAN(G, D, sample_shape=(1, 28, 28), num_classes=10, **kwargs)


def _trainer(tmp_path, callbacks=(), **kwargs) -> Trainer:
    return quiet_trainer(tmp_path, callbacks, **{"limit_val_batches": 0, **kwargs})


def _snapshot(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def _changed(before: list[torch.Tensor], net: torch.nn.Module) -> bool:
    return any(not torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))


PLAYERS = {"generator": "net_g", "discriminator": "net_d"}  # step-log name -> the module's network


class PlayerSpy(Callback):
    """Records, for every optimiser step, which player stepped and which networks' parameters moved."""

    def __init__(self):
        self.steps: list[tuple[str, dict[str, bool]]] = []
        self.batches: list[tuple[int, bool]] = []  # (generator steps in the batch, generator moved)

    def on_fit_start(self, trainer, module):
        self.steps, self.batches = [], []
        for player, opt in zip(("generator", "discriminator"), trainer.optimizers, strict=True):
            opt.register_step_pre_hook(lambda *_: self._before(module))
            opt.register_step_post_hook(lambda *_, player=player: self._after(player, module))

    def _before(self, module):
        self._params = {name: _snapshot(getattr(module, attr)) for name, attr in PLAYERS.items()}

    def _after(self, player, module):
        moved = {
            name: _changed(before, getattr(module, PLAYERS[name])) for name, before in self._params.items()
        }
        self.steps.append((player, moved))

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._batch_start = (module.g_steps, _snapshot(module.net_g))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        g_steps, before = self._batch_start
        self.batches.append((module.g_steps - g_steps, _changed(before, module.net_g)))


def test_each_step_moves_only_its_own_player(tmp_path):
    spy = PlayerSpy()
    _trainer(tmp_path, [spy], max_steps=6).fit(_gan(n_critic=2), datamodule=MNIST5k(batch_size=16))
    assert [player for player, _ in spy.steps] == ["discriminator", "discriminator", "generator"] * 2
    for player, moved in spy.steps:
        other = "generator" if player == "discriminator" else "discriminator"
        assert moved[player] and not moved[other], (player, moved)
    # A batch with only a discriminator step leaves the generator's parameters untouched.
    assert spy.batches == [(0, False), (1, True), (0, False), (1, True)]


def test_gradient_norms_are_clipped_per_player(tmp_path):
    module, norms = _gan(clip_norm_g=0.01, clip_norm_d=0.02), {"generator": [], "discriminator": []}

    class Norms(Callback):
        def on_fit_start(self, trainer, module):
            # Post-hooks see the gradients the update used (pre-hooks run before Lightning's closure clips).
            for player, opt in zip(norms, trainer.optimizers, strict=True):
                params = [p for group in opt.param_groups for p in group["params"]]
                norm = lambda params=params: torch.linalg.vector_norm(
                    torch.cat([p.grad.flatten() for p in params])
                )
                opt.register_step_post_hook(lambda *_, player=player, norm=norm: norms[player].append(norm()))

    _trainer(tmp_path, [Norms()], max_steps=4).fit(module, datamodule=MNIST5k(batch_size=16))
    assert len(norms["generator"]) == len(norms["discriminator"]) == 2
    assert max(norms["generator"]) <= 0.01 * (1 + 1e-4)
    assert max(norms["discriminator"]) <= 0.02 * (1 + 1e-4)


def test_n_critic_counts_steps_schedulers_and_ema_per_player(tmp_path):
    module, ema, spy = _gan(n_critic=5, lr_decay="linear", decay_steps=10), EMA(decay=0.9), PlayerSpy()
    trainer = _trainer(tmp_path, [ema, spy], max_steps=14, limit_val_batches=1, val_check_interval=12)
    trainer.fit(module, datamodule=MNIST5k(batch_size=16))

    assert [p for p, _ in spy.steps] == (["discriminator"] * 5 + ["generator"]) * 2 + ["discriminator"] * 2
    assert (module.d_steps, module.g_steps) == (12, 2)
    assert trainer.global_step == 14  # Lightning counts both players' steps: d + d // n_critic
    sched_g, sched_d = module.lr_schedulers()
    assert (sched_g.last_epoch, sched_d.last_epoch) == (2, 12)
    opt_g, opt_d = trainer.optimizers
    # Both decay linearly to 0 over 10 generator steps = 50 discriminator steps.
    assert opt_g.param_groups[0]["lr"] == pytest.approx(LR * (1 - 2 / 10))
    assert opt_d.param_groups[0]["lr"] == pytest.approx(LR * (1 - 12 / 50))

    assert ema.num_updates == 2  # one per generator step
    assert set(ema._shadow) == set(module.net_g.state_dict())  # the discriminator is not averaged
    name, live = next(iter(module.net_g.named_parameters()))
    assert not ema.swapped_in and not torch.equal(ema._shadow[name], live)  # training weights are back
    assert set(trainer.callback_metrics) >= {"train/d_loss", "train/d_real", "train/d_fake", "train/g_loss"}
    assert {"val/loss", "val/d_loss"} <= set(trainer.callback_metrics)


@pytest.mark.parametrize("limits", [{"max_steps": 12}, {"max_epochs": 2}], ids=["max_steps", "max_epochs"])
def test_default_linear_decay_reaches_zero_exactly_at_the_end_of_the_run(tmp_path, limits):
    module = _gan(n_critic=2, lr_decay="linear")
    trainer = _trainer(tmp_path, limit_train_batches=4, **limits)
    trainer.fit(module, datamodule=MNIST5k(batch_size=16))
    assert (module.d_steps, module.g_steps) == (8, 4)
    assert [opt.param_groups[0]["lr"] for opt in trainer.optimizers] == [0.0, 0.0]
    sched_g, sched_d = module.lr_schedulers()
    assert (sched_g.last_epoch, sched_d.last_epoch) == (4, 8)
    # The horizon is the run's 4 generator (8 discriminator) steps: the last step still had a quarter.
    assert (sched_g.lr_lambdas[0](3), sched_d.lr_lambdas[0](6)) == (0.25, 0.25)


@pytest.mark.parametrize("penalty", [{"gradient_penalty": 10.0}, {"r1_gamma": 1.0}], ids=["gp", "r1"])
def test_bf16_mixed_with_a_penalty_gives_finite_losses(tmp_path, penalty):
    loss = "wasserstein" if "gradient_penalty" in penalty else "non_saturating"
    module = _gan(batch_norm=False, loss=loss, n_critic=2, **penalty)
    trainer = _trainer(tmp_path, max_steps=6, precision="bf16-mixed")
    trainer.fit(module, datamodule=MNIST5k(batch_size=16))
    name = "train/gp" if "gradient_penalty" in penalty else "train/r1"
    metrics = trainer.callback_metrics
    for key in ("train/d_loss", "train/g_loss", name):
        assert torch.isfinite(metrics[key]), (key, metrics[key])
    assert metrics[name] > 0
    assert all(torch.isfinite(p).all() for p in module.parameters())


def _resumable_run(tmp_path, max_epochs: int, ckpt_path=None):
    torch.manual_seed(0)  # same initial weights and data order in every run
    module = _gan(n_critic=2, lr_decay="linear", decay_steps=20)
    ema = EMA(decay=0.9)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    trainer = _trainer(
        tmp_path,
        [ema, ResumeState(), checkpoint],
        enable_checkpointing=True,
        max_epochs=max_epochs,
        limit_train_batches=3,
        limit_val_batches=1,
    )
    trainer.fit(module, datamodule=MNIST5k(batch_size=16), ckpt_path=ckpt_path)
    return trainer, module, ema


def test_resume_at_an_epoch_boundary_continues_exactly(tmp_path):
    # 3 batches per epoch with n_critic = 2: the generator's step schedule runs across the boundary.
    _, straight, straight_ema = _resumable_run(tmp_path / "straight", max_epochs=3)
    _resumable_run(tmp_path / "interrupted", max_epochs=1)
    last = tmp_path / "interrupted" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)  # plain tensors and values only
    assert saved["gan_steps"] == {"discriminator": 3, "generator": 1}
    assert len(saved["optimizer_states"]) == 2 and len(saved["lr_schedulers"]) == 2
    trainer, resumed, resumed_ema = _resumable_run(tmp_path / "interrupted", max_epochs=3, ckpt_path=last)

    assert (resumed.d_steps, resumed.g_steps) == (straight.d_steps, straight.g_steps) == (9, 4)
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=1e-6, msg=key)
    for key, value in straight_ema._shadow.items():
        torch.testing.assert_close(resumed_ema._shadow[key], value, rtol=0, atol=1e-6, msg=key)
    assert resumed_ema.num_updates == straight_ema.num_updates == 4
    for opt in trainer.optimizers:  # both optimisers went on from their saved state
        assert all(
            state["step"] == (4 if opt is trainer.optimizers[0] else 9) for state in opt.state.values()
        )


def test_rng_state_round_trips_through_a_safe_checkpoint(tmp_path):
    import random

    import numpy as np

    callback = ResumeState()
    torch.save(callback.state_dict(), tmp_path / "rng.pt")
    first = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    callback.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))
    second = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert first[2] == second[2]


def test_sample_is_deterministic_in_range_and_restores_train_mode():
    module = _gan()
    module.train()
    a = module.sample(6, generator=torch.Generator().manual_seed(1))
    b = module.sample(6, generator=torch.Generator().manual_seed(1))
    c = module.sample(6, generator=torch.Generator().manual_seed(2))
    assert a.shape == (6, 1, 28, 28)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    assert module.net_g.training  # sampled in eval mode (batch norm), mode restored
    # predict: sample i uses the generator seed + i and the label i % num_classes, whatever its batch.
    batch = module.predict_step(torch.arange(6), 0)
    alone = module.sample(1, cond=torch.tensor([3]), generator=[torch.Generator().manual_seed(3)])
    torch.testing.assert_close(batch[3:4], alone, atol=1e-6, rtol=0)
    torch.testing.assert_close(module.predict_step(torch.tensor([3, 4]), 0)[0:1], alone, atol=1e-6, rtol=0)
    assert not torch.allclose(batch[3], batch[4])


# ---------------------------------------------------------------------- truncation (Brock et al. 2019)


def _normal_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0])
def test_truncate_maps_normal_draws_to_the_truncated_normal(t):
    z = torch.randn(200_000, 4, generator=torch.Generator().manual_seed(0))
    out = truncate(z, t)
    assert out.shape == z.shape and out.dtype == z.dtype
    assert out.abs().max() <= t  # within the bounds
    assert torch.equal(out, truncate(z.clone(), t))  # a fixed map of z: no random draws of its own
    assert bool((out[z.argsort(0)[:, 0], 0].diff() >= 0).all())  # monotone in z
    # The distribution of N(0, 1) truncated to [-t, t]: its CDF at a few points, its variance.
    mass = 2 * _normal_cdf(t) - 1
    for x in (-0.9 * t, -0.3 * t, 0.0, 0.5 * t):
        expected = (_normal_cdf(x) - _normal_cdf(-t)) / mass
        assert (out <= x).double().mean().item() == pytest.approx(expected, abs=0.005), x
    pdf = math.exp(-(t**2) / 2) / math.sqrt(2 * math.pi)
    assert out.double().mean().item() == pytest.approx(0.0, abs=0.005)
    assert out.double().var().item() == pytest.approx(1 - 2 * t * pdf / mass, rel=0.02)


def test_a_large_truncation_leaves_z_as_it_is_and_a_bound_must_be_positive():
    z = torch.randn(1000, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(truncate(z, 10.0), z, atol=1e-5, rtol=0)
    for bad in (0.0, -1.0):
        with pytest.raises(ConfigError, match="give a positive bound"):
            truncate(z, bad)


def test_sample_with_truncation_keeps_the_latents_within_the_bound_and_rows_independent():
    module = _gan(sampling=GANSampling(truncation=0.5))
    assert "sampling" not in module.hparams and module.sampling_settings() == {"truncation": 0.5}
    latents = []
    module.net_g.register_forward_pre_hook(lambda net, args: latents.append(args[0].clone()))
    g = lambda rows: paradigm.sample_generators(7, rows)  # noqa: E731
    batch = module.sample(6, generator=g(range(6)))  # the module's setting
    assert latents[-1].abs().max() <= 0.5
    tight = module.sample(6, generator=g(range(6)), truncation=0.1)  # a call's option overrides it
    assert latents[-1].abs().max() <= 0.1 and not torch.allclose(tight, batch)
    plain = module.sample(6, generator=g(range(6)), truncation=None)
    assert latents[-1].abs().max() > 0.5  # 6 x 8 standard normal draws: some beyond 0.5
    assert not torch.allclose(plain, batch)
    # With one generator per sample, a row is the same whatever batch it is drawn in.
    torch.testing.assert_close(module.sample(2, generator=g([4, 5])), batch[4:], atol=1e-6, rtol=0)
    with pytest.raises(
        ConfigError, match=r"unknown sampling option\(s\) truncate .*the options are: truncation"
    ):
        module.sample(1, truncate=0.5)


def test_unconditional_networks_ignore_the_labels(tmp_path):
    module = _gan(num_classes=0)
    assert module.num_classes == 0
    _trainer(tmp_path, max_steps=2).fit(
        module, datamodule=MNIST5k(batch_size=8)
    )  # labels never reach the nets


def test_networks_that_do_not_fit_the_data_are_one_clear_error():
    G = DCGANGenerator(latent_dim=8, out_channels=1, image_size=28, base_channels=8)
    with pytest.raises(ConfigError, match=r"in_channels=3 but the data's sample_shape=\[1, 28, 28\]"):
        GAN(G, DCGANDiscriminator(in_channels=3, image_size=28, base_channels=8), sample_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match=r"net_g.image_size=28 but the data's images are 32x32"):
        GAN(G, DCGANDiscriminator(in_channels=1, image_size=32), sample_shape=(1, 32, 32))
    with pytest.raises(ConfigError, match=r"net_d.num_classes=5 but the data has num_classes=10"):
        GAN(G, DCGANDiscriminator(1, 28, 8, num_classes=5), sample_shape=(1, 28, 28), num_classes=10)
    with pytest.raises(ConfigError, match=r"net_g.num_classes=0 but model.net_d.num_classes=10"):
        GAN(G, DCGANDiscriminator(1, 28, 8, num_classes=10), sample_shape=(1, 28, 28), num_classes=10)
    with pytest.raises(ConfigError, match=r"batch_norm: false"):
        GAN(G, DCGANDiscriminator(1, 28, 8), sample_shape=(1, 28, 28), gradient_penalty=10)


def test_conditional_and_unconditional_networks_that_do_not_match_are_one_line():
    def nets(g_classes: int, d_classes: int):
        G = DCGANGenerator(
            latent_dim=8, out_channels=1, image_size=28, base_channels=8, num_classes=g_classes
        )
        return G, DCGANDiscriminator(1, 28, 8, num_classes=d_classes)

    cases = [
        # a conditional generator on unlabelled data
        (
            (10, 0),
            0,
            r"^model.net_g.num_classes=10 but the data has num_classes=0: set model.net_g.init_args",
        ),
        ((10, 10), 0, r"^model.net_g.num_classes=10 but the data has num_classes=0"),
        # a conditional generator with an unconditional discriminator, and the reverse
        (
            (10, 0),
            10,
            r"^model.net_g.num_classes=10 but model.net_d.num_classes=0: .*set both to 10, or both to 0",
        ),
        (
            (0, 10),
            10,
            r"^model.net_g.num_classes=0 but model.net_d.num_classes=10: .*set both to 10, or both to 0",
        ),
    ]
    for (g_classes, d_classes), data_classes, message in cases:
        G, D = nets(g_classes, d_classes)
        with pytest.raises(ConfigError, match=message) as error:
            check_nets(G, D, (1, 28, 28), data_classes)
        assert "\n" not in str(error.value)
        with pytest.raises(ConfigError, match=message):
            GAN(G, D, sample_shape=(1, 28, 28), num_classes=data_classes)
    for g_classes, data_classes in ((0, 0), (0, 10), (10, 10)):  # these fit
        check_nets(*nets(g_classes, g_classes), (1, 28, 28), data_classes)


def test_ddp_without_unused_parameter_detection_is_one_clear_error():
    module = _gan()
    module._trainer = SimpleNamespace(strategy=DDPStrategy(process_group_backend="gloo"))
    with pytest.raises(ConfigError, match="ddp_find_unused_parameters_true"):
        module.setup("fit")
    module._trainer = SimpleNamespace(strategy=DDPStrategy(find_unused_parameters=True))
    module.setup("fit")


DDP_SCRIPT = """
import json, os, sys
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lit_genai.data import MNIST5k
from lit_genai import paradigm
from lit_genai.gan.checks import check_nets
from lit_genai.gan.module import GAN, GANSampling
from lit_genai.gan.sampling import truncate
from lit_genai.nn.dcgan import DCGANDiscriminator, DCGANGenerator

torch.set_num_threads(1)
seed_everything(0)  # every rank alike, as the CLI does


class FirstNoise(Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == 0:
            state = torch.get_rng_state()
            self.z = module._noise(2)[0].tolist()
            torch.set_rng_state(state)


G = DCGANGenerator(latent_dim=8, out_channels=1, image_size=28, base_channels=8, num_classes=10)
D = DCGANDiscriminator(in_channels=1, image_size=28, base_channels=8, num_classes=10, batch_norm=False)
module = GAN(G, D, (1, 28, 28), num_classes=10, loss="wasserstein", gradient_penalty=10.0, n_critic=2)
spy = FirstNoise()
trainer = Trainer(
    accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true", max_steps=6,
    limit_val_batches=1, val_check_interval=4, logger=False, enable_checkpointing=False,
    enable_progress_bar=False, enable_model_summary=False, callbacks=[spy], default_root_dir=sys.argv[1],
)
trainer.fit(module, datamodule=MNIST5k(batch_size=8))
result = {
    "steps": [module.d_steps, module.g_steps, trainer.global_step],
    "weights": [float(p.double().sum()) for p in module.parameters()],
    "z": spy.z,
    "val_loss": float(trainer.callback_metrics["val/loss"]),
}
with open(os.path.join(sys.argv[1], f"rank{trainer.global_rank}.json"), "w") as f:
    json.dump(result, f)
"""


def test_two_process_cpu_ddp_trains_both_players_in_step(tmp_path):
    script = tmp_path / "ddp_gan.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    # Lightning's launcher starts rank 1 by running the same script again; CPU DDP uses gloo.
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], cwd=ROOT, timeout=300, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["steps"] == rank1["steps"] == [4, 2, 6]
    assert rank0["weights"] == rank1["weights"]  # gradients were averaged: the replicas agree
    assert rank0["z"] != rank1["z"]  # the ranks draw different noise (seeded alike)
    assert rank0["val_loss"] == rank1["val_loss"]  # synced across ranks


TINY = {
    "model": {
        "init_args": {
            "net_g": {"init_args": {"base_channels": 8, "latent_dim": 8}},
            "net_d": {"init_args": {"base_channels": 8}},
        }
    },
    "data": {"init_args": {"batch_size": 8, "predict_samples": 6}},
    "trainer": TINY_CLI_TRAINER,
    "samples": {"num_samples": 10},
}


def _run(args) -> int:
    try:
        main(args)
    except SystemExit as exit:
        return exit.code
    return 0


def test_cli_fits_the_mnist_demo_resumes_and_predicts(tmp_path):
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(
        yaml.safe_dump({**TINY, "trainer": {**TINY["trainer"], "default_root_dir": str(tmp_path)}})
    )
    args = ["--config", DCGAN_MNIST, "--config", str(tiny)]
    assert _run(["fit", *args]) == 0
    assert list((tmp_path / "samples").glob("*.png")), "no sample grid was written"
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["gan_steps"] == {"discriminator": 2, "generator": 2}  # 1:1, global_step 4

    assert _run(["fit", *args, "--ckpt_path", "last", "--trainer.max_steps", "8"]) == 0
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 8
    assert checkpoint["gan_steps"] == {"discriminator": 4, "generator": 4}
    assert checkpoint["callbacks"]["EMA"]["num_updates"] == 4

    assert _run(["predict", *args, "--ckpt_path", "last"]) == 0
    out = tmp_path / "predictions"
    assert sorted(p.name for p in out.glob("sample_*.png")) == [f"sample_{i:05d}.png" for i in range(6)]
    assert (out / "grid.png").is_file()


class _PoisonCriticGradients(Callback):
    """Counts the critic's backward passes and puts an inf into its gradient on the chosen ones, so
    that the 16-mixed GradScaler skips those optimiser steps; counts the steps that really ran."""

    def __init__(self, poisoned: set[int]):
        self.poisoned, self.critic_backwards, self.real_critic_steps = poisoned, 0, 0

    def on_fit_start(self, trainer, module):
        trainer.optimizers[1].register_step_post_hook(
            lambda *_: setattr(self, "real_critic_steps", self.real_critic_steps + 1)
        )

    def on_after_backward(self, trainer, module):
        weight = next(module.net_d.parameters())
        if weight.requires_grad:  # the critic's own step (the toggle freezes it during G's)
            self.critic_backwards += 1
            if self.critic_backwards in self.poisoned:
                weight.grad.view(-1)[0] = float("inf")


def test_steps_the_amp_scaler_skips_count_for_nothing(tmp_path):
    # 16-mixed on CPU through Lightning's own MixedPrecision plugin and a real GradScaler.
    from lightning.pytorch.plugins.precision import MixedPrecision

    module = _gan(n_critic=2, lr_decay="linear", decay_steps=10)
    spy = _PoisonCriticGradients(poisoned={2, 3})
    trainer = quiet_trainer(
        tmp_path,
        [spy],
        plugins=[MixedPrecision("16-mixed", "cpu")],
        max_steps=8,
        limit_train_batches=20,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=MNIST5k(batch_size=8))
    assert spy.critic_backwards > spy.real_critic_steps  # at least the two poisoned steps were skipped
    assert module.d_steps == spy.real_critic_steps
    assert module.g_steps == module.d_steps // 2  # n_critic counts real critic steps only
    sched_g, sched_d = (config.scheduler for config in trainer.lr_scheduler_configs)
    assert (sched_g.last_epoch, sched_d.last_epoch) == (module.g_steps, module.d_steps)
