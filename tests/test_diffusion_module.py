"""The Diffusion LightningModule: training on real bundled data, sampling, guidance, checks."""

import pytest
import torch
from helpers import quiet_trainer, tiny_conditional_diffusion
from lightning.pytorch import Trainer
from torch import nn

from lit_genai.callbacks.samples import SampleWriter
from lit_genai.data import MNIST5k
from lit_genai.diffusion import EDM, Diffusion, DiffusionSampling, EDMSampling, FlowMatching, FlowSampling
from lit_genai.errors import ConfigError
from lit_genai.nn import UNet

TINY = dict(
    base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(), dropout=0.0, num_groups=8
)


def _module(num_classes: int = 0, **kwargs) -> Diffusion:
    net = UNet(in_channels=1, num_classes=num_classes, **TINY)
    kwargs.setdefault("optimizer", lambda params: torch.optim.Adam(params, lr=2e-3))
    return Diffusion(net, sample_shape=(1, 28, 28), num_classes=10, num_timesteps=100, **kwargs)


def _trainer(tmp_path, **kwargs) -> Trainer:
    return quiet_trainer(tmp_path, **kwargs)


def test_training_on_bundled_mnist_lowers_the_loss(tmp_path):
    data = MNIST5k(batch_size=32)
    module = _module(num_classes=10)
    trainer = _trainer(tmp_path, max_steps=80, limit_val_batches=4, val_check_interval=80)
    before = trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    trainer.fit(module, datamodule=data)
    after = trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    assert before > 0.9  # zero-initialised output: the loss starts at E[eps^2] = 1
    assert after < 0.6 * before, (before, after)


def test_validation_loss_is_deterministic(tmp_path):
    data, module = MNIST5k(batch_size=32), _module()
    trainer = _trainer(tmp_path, limit_val_batches=2)
    first = trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    second = trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    assert first == second


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sample_is_deterministic_in_range_and_restores_train_mode(sampler):
    module = _module(sampling=DiffusionSampling(sampler=sampler, steps=5))
    for p in module.net.conv_out.parameters():  # make the zero-initialised output layer non-trivial
        nn.init.normal_(p, std=0.1)
    module.train()
    a = module.sample(3, generator=torch.Generator().manual_seed(1))
    b = module.sample(3, generator=torch.Generator().manual_seed(1))
    c = module.sample(3, generator=torch.Generator().manual_seed(2))
    assert a.shape == (3, 1, 28, 28)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    assert module.net.training  # sampling ran in eval mode and put the mode back


class Recorder(nn.Module):
    """A stand-in denoiser: returns the label as a constant image and records what it was given."""

    in_channels, num_classes = 1, 10

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.labels: list[torch.Tensor] = []

    def forward(self, x, t, y=None):
        self.labels.append(y.clone())
        return self.scale * y.float().view(-1, 1, 1, 1).expand_as(x) / 10


def test_classifier_free_guidance_convention():
    net = Recorder()
    module = Diffusion(net, sample_shape=(1, 4, 4), num_classes=10, num_timesteps=50)
    x, t, y = torch.randn(2, 1, 4, 4), torch.tensor([3, 3]), torch.tensor([2, 7])
    plain = module._model_fn(y, 0.0)(x, t)
    guided = module._model_fn(y, 2.0)(x, t)
    null = torch.full((2, 1, 4, 4), 1.0)  # the null label 10 / 10
    # (1 + w) eps(x, c) - w eps(x, null) with w = 2 (Ho & Salimans 2022, eq. 6)
    torch.testing.assert_close(guided, 3 * plain - 2 * null)
    assert torch.equal(net.labels[-1], torch.tensor([2, 7, 10, 10]))  # one batched pass, null second


def test_label_dropout_feeds_the_null_label():
    net = Recorder()
    module = Diffusion(net, sample_shape=(1, 4, 4), num_classes=10, num_timesteps=50, p_uncond=1.0)
    module.training_step((torch.zeros(4, 1, 4, 4), torch.tensor([0, 1, 2, 3])), 0)
    assert torch.equal(net.labels[-1], torch.full((4,), 10))
    module = Diffusion(net, sample_shape=(1, 4, 4), num_classes=10, num_timesteps=50, p_uncond=0.0)
    module.training_step((torch.zeros(4, 1, 4, 4), torch.tensor([0, 1, 2, 3])), 0)
    assert torch.equal(net.labels[-1], torch.tensor([0, 1, 2, 3]))


def test_unconditional_net_on_labelled_data_ignores_labels():
    module = _module(num_classes=0)
    assert module.num_classes == 0
    module.training_step((torch.zeros(2, 1, 28, 28), torch.tensor([3, 4])), 0)  # no error: labels unused


def test_network_that_does_not_fit_the_data_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"in_channels=3 .* sample_shape=\[1, 28, 28\]"):
        Diffusion(UNet(in_channels=3, **TINY), sample_shape=(1, 28, 28), num_classes=10)
    with pytest.raises(ConfigError, match=r"net.num_classes=5 but the data has num_classes=10"):
        Diffusion(UNet(in_channels=1, num_classes=5, **TINY), sample_shape=(1, 28, 28), num_classes=10)


def test_warmup_schedule_and_safe_checkpoint(tmp_path):
    data = MNIST5k(batch_size=16)
    module = _module(warmup_steps=10)
    trainer = _trainer(tmp_path, max_steps=4, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(2e-3 * 5 / 10)  # linear warm-up: step 4 uses factor (4 + 1) / 10
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)  # loadable without unpickling code
    assert "net" not in checkpoint["hyper_parameters"]
    default = Diffusion(UNet(in_channels=1, **TINY), sample_shape=(1, 28, 28))  # the default optimiser class
    assert "optimizer" not in default.hparams and "net" not in default.hparams
    loaded = Diffusion.load_from_checkpoint(
        path, net=UNet(in_channels=1, **TINY), weights_only=True, sampling=DiffusionSampling(steps=3)
    )
    assert loaded.sampling == DiffusionSampling(steps=3)  # the settings given when loading

    # inference and evaluation choices come from the command line
    assert not {"sampling", "sampler", "bpd_timesteps", "test_bpd_timesteps"} & set(
        checkpoint["hyper_parameters"]
    )


def test_validation_reports_bits_per_dim_when_asked(tmp_path):
    data = MNIST5k(batch_size=16)
    module = _module(bpd_timesteps=3)
    metrics = _trainer(tmp_path, limit_val_batches=1).validate(module, datamodule=data, verbose=False)[0]
    # An untrained model: a valid bound, worse than 1 bit/dim, better than the 8 bits of a uniform guess
    # would be for a good model (see tests/test_likelihood.py for the maths).
    assert 1.0 < metrics["val/bpd"] < 20.0
    assert metrics["val/nll_nats"] == pytest.approx(metrics["val/bpd"] * 784 * 0.6931471805599453, rel=1e-5)
    assert (
        "val/bpd"
        not in _trainer(tmp_path, limit_val_batches=1).validate(_module(), datamodule=data, verbose=False)[0]
    )


def test_test_reports_bits_per_dim_by_default(tmp_path):
    metrics = _trainer(tmp_path, limit_test_batches=1).test(
        _module(test_bpd_timesteps=2), datamodule=MNIST5k(batch_size=8), verbose=False
    )[0]
    assert 1.0 < metrics["test/bpd"] < 20.0
    assert _module().test_bpd_timesteps > 0


def test_predict_sample_depends_on_seed_and_index_only(tmp_path):
    # SampleWriter names files after the sample index, so "sample i = seed + i" must hold whatever
    # the batch size: the same file from batches of 1 and of 16 is byte-identical.
    module = tiny_conditional_diffusion()
    written = {}
    for batch_size in (1, 16):
        out = tmp_path / f"batch{batch_size}"
        trainer = quiet_trainer(tmp_path, [SampleWriter(output_dir=str(out))])
        trainer.predict(module, datamodule=MNIST5k(batch_size=batch_size, predict_samples=5))
        written[batch_size] = {p.name: p.read_bytes() for p in out.glob("sample_*.png")}
    assert sorted(written[1]) == sorted(written[16]) == [f"sample_{i:05d}.png" for i in range(5)]
    assert written[1]["sample_00003.png"] == written[16]["sample_00003.png"]
    assert written[1]["sample_00003.png"] != written[1]["sample_00004.png"]


# ---------------------------------------------------------------------- sampling settings

SMALL = dict(
    base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(), dropout=0.0, num_groups=4
)
MODULE_OF = {DiffusionSampling: Diffusion, EDMSampling: EDM, FlowSampling: FlowMatching}

# Each sampler of each module, with settings away from the defaults, so that every field is in use.
SETTINGS = [
    DiffusionSampling(sampler="ddpm", variance="beta_tilde", guidance_scale=1.5),
    DiffusionSampling(
        sampler="ddim", steps=4, eta=0.5, skip="quadratic", guidance_scale=1.5, clip_denoised=False
    ),
    DiffusionSampling(sampler="euler", steps=4, sigma_max=None),
    DiffusionSampling(sampler="heun", steps=3, sigma_max=5.0, guidance_scale=1.5),
    DiffusionSampling(sampler="dpm_solver++", steps=4, guidance_scale=1.5, clip_denoised=False),
    EDMSampling(
        sampler="heun",
        steps=3,
        sigma_min=0.01,
        sigma_max=20.0,
        rho=5.0,
        s_churn=5.0,
        s_tmin=0.05,
        s_tmax=10.0,
        s_noise=1.01,
        guidance_scale=1.5,
    ),
    EDMSampling(sampler="euler", steps=4),
    EDMSampling(sampler="dpm_solver++", steps=4, guidance_scale=1.5),
    FlowSampling(sampler="euler", steps=4, time_shift=3.0, guidance_scale=1.5),
    FlowSampling(sampler="heun", steps=3),
    FlowSampling(sampler="dpm_solver++", steps=4, guidance_scale=1.5),
]
# Two other values of each field (the first that differs from the current one is used).
OTHER_VALUES = {
    "sampler": ("euler", "heun"),
    "steps": (2, 3),
    "eta": (1.0, 0.0),
    "skip": ("uniform", "quadratic"),
    "variance": ("beta", "beta_tilde"),
    "guidance_scale": (0.5, 1.0),
    "clip_denoised": (True, False),
    "sigma_min": (0.05, 0.1),
    "sigma_max": (3.0, 4.0),
    "rho": (3.0, 4.0),
    "s_churn": (2.0, 3.0),
    "s_tmin": (0.1, 0.2),
    "s_tmax": (5.0, 6.0),
    "s_noise": (1.05, 1.1),
    "time_shift": (2.0, 3.0),
    # image to image: without a source these change nothing; tests/test_image_to_image.py draws with one
    "strength": (0.5, 1.0),
    "inpaint": ("repaint", "replacement"),
    "repaint_jump": (5, 10),
    "repaint_resample": (2, 10),
}


def _built_with(settings):
    """A class-conditional module of 1x8x8 images with ``settings``; the same weights at every call."""
    torch.manual_seed(0)
    net = UNet(in_channels=1, num_classes=10, **SMALL)
    for p in net.parameters():  # the zero-initialised layers (output, residual branches): non-trivial
        if p.dim() > 1 and not p.any():
            nn.init.normal_(p, std=0.1)
    kind = MODULE_OF[type(settings)]
    extra = dict(num_timesteps=12, beta_schedule="cosine") if kind is Diffusion else {}
    return kind(net, sample_shape=(1, 8, 8), num_classes=10, sampling=settings, **extra)


def _draw(module, **options):
    cond = {"label": torch.tensor([3, 7])}
    return module.sample(2, cond=cond, generator=torch.Generator().manual_seed(0), **options)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: f"{type(s).__name__}-{s.sampler}")
def test_each_setting_passed_at_its_current_value_changes_no_sample(settings):
    module = _built_with(settings)
    assert module.sampling == settings and module.sampling_settings() == settings.as_dict()
    reference = _draw(module)
    assert reference.shape == (2, 1, 8, 8) and torch.isfinite(reference).all()
    for name in settings.names():
        assert torch.equal(_draw(module, **{name: getattr(settings, name)}), reference), name
    assert torch.equal(_draw(module, **settings.as_dict()), reference)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: f"{type(s).__name__}-{s.sampler}")
def test_a_sample_option_gives_the_samples_of_the_module_built_with_it(settings):
    module = _built_with(settings)
    for name in settings.names():
        if name == "prompt":  # a caption: text-conditional models only (tests/test_text2image.py)
            continue
        if name in ("init_image", "mask"):  # files of image to image (tests/test_image_to_image.py)
            continue
        value = next(v for v in OTHER_VALUES[name] if v != getattr(settings, name))
        other = _built_with(settings.replace(**{name: value}))
        assert module.sampling_settings(**{name: value}) == other.sampling.as_dict()
        assert torch.equal(_draw(module, **{name: value}), _draw(other)), name
    assert module.sampling == settings  # an option is for one call only


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: f"{type(s).__name__}-{s.sampler}")
def test_steps_given_to_sample_are_the_steps_of_a_module_built_with_them(settings):
    five, three = _built_with(settings.replace(steps=5)), _built_with(settings.replace(steps=3))
    for name, value in five.state_dict().items():
        assert torch.equal(three.state_dict()[name], value), name
    assert torch.equal(_draw(five, steps=3), _draw(three))
    if settings.sampler != "ddpm":  # ancestral sampling takes every step of the schedule
        assert not torch.equal(_draw(five), _draw(three))


def test_unknown_options_and_samplers_are_one_line_errors_naming_the_choices():
    module = _built_with(DiffusionSampling(steps=2))
    with pytest.raises(ConfigError, match="unknown sampling option.*sampling_steps.*steps, eta") as error:
        module.sample(1, sampling_steps=2)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="unknown sampler 'lms'; set model.sampling.sampler to ddpm, ddim"):
        module.sample(1, sampler="lms")
    module.sampling = module.sampling.replace(sampler="lms")  # a bad value set on the module: the same
    with pytest.raises(ConfigError, match="set model.sampling.sampler to ddpm, ddim"):
        module.sample(1)


DDP_SCRIPT = """
import json, os, sys
import torch
from lightning.pytorch import Trainer, seed_everything
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
from helpers import tiny_conditional_diffusion
from lit_genai.data import MNIST5k

torch.set_num_threads(1)
seed_everything(0)  # every rank alike, as the CLI does
seen = {}


class Spy(type(tiny_conditional_diffusion())):
    def _loss_terms(self, x0, y, t, eps, context=None):
        if self.training and "t" not in seen:
            seen.update(t=t.tolist(), eps=eps.flatten()[:16].tolist(), dropped=(y == 10).tolist())
        return super()._loss_terms(x0, y, t, eps, context)


class Flips(MNIST5k):
    def on_after_batch_transfer(self, batch, dataloader_idx):
        out = super().on_after_batch_transfer(batch, dataloader_idx)
        if self.trainer.training and "flipped" not in seen:
            seen["flipped"] = [not torch.equal(a, b) for a, b in zip(batch[0], out[0])]
        return out


module = tiny_conditional_diffusion(p_uncond=0.5)
module.__class__ = Spy
trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=1, limit_val_batches=0,
                  logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, default_root_dir=sys.argv[1])
trainer.fit(module, datamodule=Flips(batch_size=16, random_flip=True))
with open(os.path.join(sys.argv[1], f"rank{trainer.global_rank}.json"), "w") as f:
    json.dump(seen, f)
"""


def test_ddp_ranks_draw_distinct_timesteps_noise_label_dropout_and_flips(tmp_path):
    import json
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    script = tmp_path / "ddp_diffusion.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], cwd=root, timeout=300, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for key in ("t", "eps", "dropped", "flipped"):
        assert len(rank0[key]) == len(rank1[key]) > 0
        assert rank0[key] != rank1[key], f"both ranks drew the same {key}"
