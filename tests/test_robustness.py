"""Adversarial examples (lit_genai/adversarial/): FGSM/PGD geometry, objectives, curves, the subcommand,
and adversarial training of the Classifier."""

import functools
import json
import math
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import TINY_CLI_TRAINER, quiet_trainer
from lightning.pytorch import LightningModule, Trainer
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_genai.adversarial.attacks import fgsm, pgd, random_in_ball, random_on_sphere
from lit_genai.adversarial.command import main as robustness_main
from lit_genai.adversarial.curves import robustness_curve
from lit_genai.adversarial.objectives import build_objective, check_objective, latent_objective
from lit_genai.adversarial.reports import curve_scalars, log_curve, write_comparison, write_curve
from lit_genai.callbacks.ema import load_for_evaluation
from lit_genai.cli import main
from lit_genai.data import MNIST5k
from lit_genai.errors import ConfigError
from lit_genai.metrics.classifier import Classifier

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER_YAML = str(ROOT / "experiments" / "eval" / "mnist_classifier.yaml")


def _linf(d):
    return d.flatten(1).abs().amax(1)


def _l2(d):
    return d.flatten(1).norm(dim=1)


class MLP(nn.Module):
    """A small MLP classifier of (B, C, H, W) images, with the attributes check_net reads."""

    def __init__(self, shape=(1, 4, 4), num_classes=3, hidden=32):
        super().__init__()
        self.in_channels, self.num_classes = shape[0], num_classes
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(shape), hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x):
        return self.body(x)


class LinearAutoencoder(LightningModule):
    """The autoencoder contract of docs/architecture.md in a few lines: a linear encoder to D=4 latents
    and a tanh-linear decoder, on 1x4x4 images."""

    latent_space = "continuous"
    num_classes = 0

    def __init__(self, latent_dim=4):
        super().__init__()
        self.latent_shape = (latent_dim,)
        self.enc = nn.Linear(16, latent_dim)
        self.dec = nn.Linear(latent_dim, 16)

    def encode(self, x, y=None):
        return self.enc(x.flatten(1))  # (B, D)

    def decode(self, z, y=None):
        return torch.tanh(self.dec(z)).view(-1, 1, 4, 4)

    def reconstruct(self, x, y=None):
        return self.decode(self.encode(x, y), y)

    def per_example_loss(self, x, y=None):
        return (self.reconstruct(x, y) - x).flatten(1).pow(2).sum(1)


@pytest.fixture()
def data():
    x = torch.rand(32, 1, 4, 4) * 2 - 1  # (B, C, H, W) in [-1, 1]
    y = torch.randint(0, 3, (32,))
    return x, y


@pytest.fixture()
def net():
    return MLP()


def _ce(net, y):
    return lambda v: F.cross_entropy(net(v), y, reduction="none")


# ---------------------------------------------------------------------- geometry


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_attacks_stay_in_the_ball_and_the_bounds_and_leave_parameter_grads_alone(attack, norm, data, net):
    x, y = data
    x = x.clamp(-0.9, 0.9)
    x[:4] = 1.0  # examples on the boundary of the box: the clamp must bind
    eps = 0.3 if norm == "linf" else 1.0
    for p in net.parameters():
        p.grad = torch.full_like(p, 7.0)  # must survive the attack unchanged
    net.train()
    with torch.no_grad():  # attacks take their own gradients, also inside no_grad validation
        if attack == "fgsm":
            x_adv = fgsm(_ce(net, y), x, eps, norm=norm)
        else:
            x_adv = pgd(_ce(net, y), x, eps, norm=norm, steps=5, generator=torch.Generator().manual_seed(0))
    size = _linf(x_adv - x) if norm == "linf" else _l2(x_adv - x)
    assert (size <= eps * (1 + 1e-5)).all()
    assert x_adv.min() >= -1 and x_adv.max() <= 1
    assert (size > 0.5 * eps).all()  # it moved: not a trivially satisfied bound
    assert not x_adv.requires_grad and x_adv.grad_fn is None
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in net.parameters())
    assert net.training  # the caller's mode is kept


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_on_a_linear_objective_fgsm_and_pgd_reach_the_maximiser_of_the_ball(norm):
    # J(x) = <w, x>: the maximiser over the L-inf ball is x + eps·sign(w), over the L2 ball
    # x + eps·w/||w|| (closed forms); unbounded inputs, so no clamp interferes.
    x = torch.randn(6, 2, 3, 3)
    w = torch.randn(6, 2, 3, 3)
    eps = 0.25
    best = x + eps * (w.sign() if norm == "linf" else w / _l2(w).view(-1, 1, 1, 1))
    objective = lambda v: (v * w).flatten(1).sum(1)  # noqa: E731
    torch.testing.assert_close(fgsm(objective, x, eps, norm=norm, bounds=None), best)
    adv = pgd(objective, x, eps, norm=norm, steps=20, random_start=False, bounds=None)
    torch.testing.assert_close(adv, best, atol=1e-5, rtol=0)
    # From a random start: L-inf sign steps (20 x eps/8) cross the cube, so the vertex is exact; on the
    # sphere the component orthogonal to w only shrinks by the projection, so the gain is near-optimal.
    adv = pgd(objective, x, eps, norm=norm, steps=20, random_start=True, bounds=None)
    if norm == "linf":
        torch.testing.assert_close(adv, best, atol=1e-5, rtol=0)
    else:
        gain, best_gain = objective(adv) - objective(x), objective(best) - objective(x)
        assert (gain > 0.95 * best_gain).all() and (gain <= best_gain * (1 + 1e-5)).all()


def test_pgd_projection_with_box_matches_the_clamped_vertex_and_default_step():
    # L-inf, one step without random start and step >= eps: x + eps·sign(w), clamped to [-1, 1].
    x = torch.tensor([[0.9, -0.95, 0.0, 0.5]])
    w = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    objective = lambda v: (v * w).sum(1)  # noqa: E731
    adv = pgd(objective, x, 0.2, steps=1, random_start=False)  # default step 2.5·eps/1 > eps
    torch.testing.assert_close(adv, torch.tensor([[1.0, -1.0, -0.2, 0.7]]))
    # an explicit step: two steps of 0.01 stay inside the ball of radius 0.04
    adv = pgd(objective, x, 0.04, steps=2, random_start=False, step_size=0.01)
    torch.testing.assert_close(adv, x + 0.02 * w)


def test_random_starts_are_uniform_in_the_ball_and_reproducible():
    x = torch.zeros(20000, 1, 1, 3)  # D = 3
    eps = 0.5
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    d_inf = random_in_ball(x, eps, "linf", g())
    assert d_inf.abs().max() <= eps
    assert d_inf.mean().abs() < 0.01 and abs(d_inf.var().item() - eps**2 / 3) < 0.002  # U[-eps, eps]
    d2 = random_in_ball(x, eps, "l2", g())
    r = _l2(d2) / eps
    # uniform in the 3-ball: P(r <= t) = t^3, so P(r <= 0.5) = 1/8 and E[r] = 3/4
    assert r.max() <= 1 + 1e-6
    assert abs((r <= 0.5).float().mean().item() - 0.125) < 0.01
    assert abs(r.mean().item() - 0.75) < 0.01
    torch.testing.assert_close(random_in_ball(x, eps, "l2", g()), d2)  # same generator, same start
    assert not torch.equal(random_in_ball(x, eps, "l2", torch.Generator().manual_seed(4)), d2)
    # the noise baseline has norm exactly eps
    torch.testing.assert_close(_l2(random_on_sphere(x, eps, "l2", g())), torch.full((20000,), eps))
    assert set(random_on_sphere(x, eps, "linf", g()).unique().tolist()) == {-eps, eps}


def test_pgd_raises_the_loss_more_than_noise_of_the_same_norm(data, net):
    x, y = data
    for norm, eps in (("linf", 0.1), ("l2", 0.4)):
        clean = _ce(net, y)(x).mean()
        adv = _ce(net, y)(pgd(_ce(net, y), x, eps, norm=norm)).mean()
        noise = _ce(net, y)((x + random_on_sphere(x, eps, norm)).clamp(-1, 1)).mean()
        assert adv > clean + 0.05 and adv > noise + 0.05
        assert abs(noise - clean) < 0.5 * (adv - clean)


def test_an_objective_that_does_not_see_its_input_is_refused(data):
    x, _ = data
    from lit_genai.errors import LitGenAIError

    with pytest.raises(LitGenAIError, match="one value per example"):
        fgsm(lambda v: v.sum(), x, 0.1)
    with pytest.raises(LitGenAIError, match="does not depend differentiably"):
        pgd(lambda v: torch.zeros(v.shape[0]), x, 0.1)


# ---------------------------------------------------------------------- objectives of generative models


def test_the_targeted_latent_attack_moves_the_code_towards_the_target(data):
    x, _ = data
    module = LinearAutoencoder()
    target = x.roll(1, 0)
    with torch.no_grad():
        z_target = module.encode(target)
        before = _l2(module.encode(x) - z_target)
    x_adv = pgd(latent_objective(module, target), x, 0.3, steps=20)
    with torch.no_grad():
        after = _l2(module.encode(x_adv) - z_target)
    assert (after < before).all()
    assert after.mean() < 0.7 * before.mean()

    rows = robustness_curve(module, [(x, None)], [0.0, 0.3], objective="latent", steps=20)
    zero, attacked = rows
    assert zero["distance_pgd"] == pytest.approx(zero["distance_clean"])  # eps 0 changes nothing
    assert attacked["distance_clean"] == pytest.approx(before.mean().item(), rel=1e-5)
    assert attacked["distance_pgd"] < 0.7 * attacked["distance_clean"]
    assert attacked["distance_noise"] > 0.9 * attacked["distance_clean"]  # noise finds no direction
    assert attacked["objective_pgd"] == pytest.approx(-(after**2).mean().item(), rel=0.05)


def test_reconstruction_attacks_untargeted_and_targeted(data):
    x, _ = data
    module = LinearAutoencoder()
    (_, attacked) = robustness_curve(module, [(x, None)], [0.0, 0.3], objective="reconstruction")
    rise = attacked["objective_pgd"] - attacked["objective_clean"]  # MSE of the reconstruction to x
    assert rise > 0.05 and rise > 10 * abs(attacked["objective_noise"] - attacked["objective_clean"])
    assert attacked["distance_pgd"] > attacked["distance_noise"] + 0.1
    (_, targeted) = robustness_curve(module, [(x, None)], [0.0, 0.3], objective="target_reconstruction")
    assert targeted["distance_pgd"] < targeted["distance_clean"] - 0.1
    assert targeted["distance_noise"] > targeted["distance_clean"] - 0.02
    assert targeted["objective_pgd"] > targeted["objective_clean"] + 0.05  # -MSE to the target rose
    # the distance is the L2 norm of reconstruct(x) - target, here for the clean input
    fn, distance = build_objective(module, "target_reconstruction", x)
    with torch.no_grad():
        expected = _l2(module.reconstruct(x) - x.roll(1, 0))
    torch.testing.assert_close(distance(x), expected)


def test_a_module_without_what_the_objective_needs_is_one_line():
    classifier = Classifier(MLP(shape=(1, 28, 28), num_classes=10))
    with pytest.raises(ConfigError) as err:
        check_objective(classifier, "latent")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("objective 'latent' needs Classifier.encode()")
    assert "(loss)" in message  # what it supports

    class Tokenizer(LinearAutoencoder):
        latent_space = "discrete"

    with pytest.raises(ConfigError, match="continuous latent space"):
        check_objective(Tokenizer(), "latent")
    with pytest.raises(ConfigError, match="not one of"):
        check_objective(classifier, "elbo")


def test_the_loss_objective_passes_labels_only_to_models_that_use_them(data):
    x, y = data
    seen = []

    class Recorder(LinearAutoencoder):
        def per_example_loss(self, x, y=None):
            seen.append(y)
            return super().per_example_loss(x)

    fn, _ = build_objective(Recorder(), "loss", x, y)
    fn(x)
    assert seen == [None]  # unconditional (num_classes 0)
    conditional = Recorder()
    conditional.num_classes = 3
    fn, _ = build_objective(conditional, "loss", x, y)
    fn(x)
    assert seen[-1] is y


# ---------------------------------------------------------------------- curves: files and loggers


def _classifier_rows(data, net):
    x, y = data
    module = Classifier(net, sample_shape=(1, 4, 4), num_classes=3)
    return robustness_curve(module, [(x[:16], y[:16]), (x[16:], y[16:])], [0.0, 0.1, 0.3], seed=0)


def test_the_curve_of_a_classifier_measures_clean_pgd_and_noise(data, net):
    x, y = data
    rows = _classifier_rows(data, net)
    assert [r["eps"] for r in rows] == [0.0, 0.1, 0.3]
    with torch.no_grad():
        logits = net.eval()(x)
    for row in rows:
        assert row["num_examples"] == 32
        assert row["accuracy_clean"] == pytest.approx((logits.argmax(-1) == y).float().mean().item())
        assert row["objective_clean"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
        assert "distance_clean" not in row
    assert rows[0]["objective_pgd"] == pytest.approx(rows[0]["objective_clean"])
    assert rows[1]["objective_pgd"] < rows[2]["objective_pgd"]
    assert rows[2]["accuracy_pgd"] < rows[2]["accuracy_noise"]
    assert rows[2]["objective_pgd"] > rows[2]["objective_noise"]
    assert rows == _classifier_rows(data, net)  # seeded: the same curve again


def test_write_curve_writes_json_and_a_png_with_one_panel_per_metric(data, net, tmp_path):
    rows = _classifier_rows(data, net)
    json_path, png_path = write_curve(rows, tmp_path / "out", "a title")
    assert json.loads(json_path.read_text()) == {"title": "a title", "rows": rows}
    with Image.open(png_path) as image:
        assert image.size == (2 * 420, 340)  # objective and accuracy panels
    ae_rows = robustness_curve(LinearAutoencoder(), [data], [0.0, 0.2], objective="latent")
    _, png_path = write_curve(ae_rows, tmp_path / "ae", "latent")
    with Image.open(png_path) as image:
        assert image.size == (2 * 420, 340)  # objective and distance panels


def test_compare_plots_several_curves_from_their_json_files(data, net, tmp_path, capsys):
    rows = _classifier_rows(data, net)
    json_path, _ = write_curve(rows, tmp_path / "a", "a")
    out = tmp_path / "compare.png"
    robustness_main(["compare", str(out), f"first={json_path}", f"second={json_path}", "--title", "t"])
    assert "wrote" in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.size == (2 * 420, 340)  # the panels the curves share: objective and accuracy
    with pytest.raises(SystemExit):
        robustness_main(["compare", str(out), f"missing={tmp_path / 'none.json'}"])
    with pytest.raises(ConfigError, match="share a metric"):
        write_comparison({}, out)


def test_scalars_carry_the_radius_in_their_key(data, net):
    rows = _classifier_rows(data, net)
    scalars = curve_scalars(rows)
    assert scalars["robustness/accuracy_pgd@eps=0.3"] == rows[2]["accuracy_pgd"]
    assert scalars["robustness/objective_noise@eps=0.1"] == rows[1]["objective_noise"]
    assert len(scalars) == 3 * 6


def test_log_curve_reaches_tensorboard_and_wandb_offline(data, net, tmp_path, monkeypatch):
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    import wandb

    rows = _classifier_rows(data, net)
    _, png_path = write_curve(rows, tmp_path, "t")
    loggers = [TensorBoardLogger(tmp_path, name="tb"), WandbLogger(save_dir=tmp_path, offline=True)]
    trainer = Trainer(default_root_dir=tmp_path, logger=loggers, enable_progress_bar=False)
    try:
        log_curve(trainer, rows, png_path)
    finally:
        wandb.finish()
    loggers[0].experiment.flush()
    (events,) = (tmp_path / "tb").glob("version_0/events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    assert "robustness/curve" in accumulator.Tags()["images"]
    (event,) = accumulator.Scalars("robustness/accuracy_pgd@eps=0.3")
    assert event.value == pytest.approx(rows[2]["accuracy_pgd"])
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list(run.glob("files/media/images/robustness/curve_*.png"))
    (table,) = run.glob("files/media/table/robustness/table_*.table.json")
    content = json.loads(table.read_text())
    assert content["columns"][0] == "eps" and len(content["data"]) == 3


# ---------------------------------------------------------------------- adversarial training


def _mnist_subset(n):
    dm = MNIST5k()
    dm.setup("fit")
    x, y = dm.train_set.tensors
    xt, yt = dm.test_set.tensors
    return (x[:n], y[:n]), (xt, yt)


def _train(adversarial_eps, train, tmp_path, epochs=5):
    torch.manual_seed(0)
    model = Classifier(
        MLP(shape=(1, 28, 28), num_classes=10, hidden=256),
        max_shift=0,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
        adversarial_eps=adversarial_eps,
        adversarial_steps=3,
    )
    loader = DataLoader(
        TensorDataset(*train), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    quiet_trainer(tmp_path, max_epochs=epochs).fit(model, loader)
    return model


def test_adversarial_training_makes_the_classifier_more_robust(tmp_path):
    # Madry et al. 2018 on a small scale: an MLP on 1,500 MNIST5k digits, 5 epochs, PGD-3 at eps 0.3
    # in [-1, 1] units (0.15 in [0, 1]). Measured PGD-10 accuracy on the 500 test digits: 0.08 normal,
    # 0.40 adversarial (seeds 0-3: 0.08-0.10 vs 0.37-0.43). Capacity matters (their Section 4): with 64
    # hidden units instead of 256, adversarial training collapsed to a constant guess for some seeds.
    train, test = _mnist_subset(1500)
    eps = 0.3
    normal = _train(0.0, train, tmp_path)
    robust = _train(eps, train, tmp_path)
    (row_normal,) = robustness_curve(normal, [test], [eps], steps=10)
    (row_robust,) = robustness_curve(robust, [test], [eps], steps=10)
    assert row_normal["accuracy_clean"] > 0.8
    assert row_normal["accuracy_pgd"] < 0.2
    assert row_robust["accuracy_clean"] > 0.6
    assert row_robust["accuracy_pgd"] > row_normal["accuracy_pgd"] + 0.2
    assert row_robust["objective_pgd"] < row_normal["objective_pgd"]


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
def test_the_training_step_trains_on_pgd_examples_with_clean_gradients(data):
    x, y = data
    net = MLP()
    model = Classifier(net, sample_shape=(1, 4, 4), num_classes=3, max_shift=0, adversarial_eps=0.2)
    inputs = []
    net.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    loss = model.training_step((x, y), 0)
    assert len(inputs) == model.adversarial_steps + 1  # PGD steps, then the loss
    x_adv = inputs[-1]
    assert _linf(x_adv - x).max() <= 0.2 + 1e-6 and (_linf(x_adv - x) > 0.1).all()
    assert loss.item() == pytest.approx(F.cross_entropy(net(x_adv), y).item())
    assert loss.item() > F.cross_entropy(net(x), y).item()
    loss.backward()  # the attack's gradients leaked into no parameter: grads are those of the loss
    expected = torch.autograd.grad(F.cross_entropy(net(x_adv), y), list(net.parameters()))
    for p, g in zip(net.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g)
    torch.testing.assert_close(model.per_example_loss(x, y), F.cross_entropy(net(x), y, reduction="none"))


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
def test_adversarial_training_is_off_by_default_and_checks_its_arguments(data):
    x, y = data
    net = MLP()
    model = Classifier(net, sample_shape=(1, 4, 4), num_classes=3, max_shift=0)
    assert model.adversarial_eps == 0.0 and model.hparams["adversarial_eps"] == 0.0
    inputs = []
    net.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    model.training_step((x, y), 0)
    assert len(inputs) == 1 and torch.equal(inputs[0], x)
    with pytest.raises(ConfigError, match="adversarial_eps=-0.1"):
        Classifier(MLP(), sample_shape=(1, 4, 4), num_classes=3, adversarial_eps=-0.1)


# ---------------------------------------------------------------------- the subcommand


def _run(args):
    try:
        with mock.patch.object(sys, "argv", ["lit-genai"]):
            main(args)
    except SystemExit as exit:
        return exit.code
    return 0


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tiny Classifier trained for 4 steps with EMA on: (its CLI arguments, its run folder)."""
    root = tmp_path_factory.mktemp("classifier")
    overrides = {
        "model": {"init_args": {"net": {"init_args": {"width": 4, "feature_dim": 16}}}},
        "data": {"init_args": {"batch_size": 32}},
        "trainer": {**TINY_CLI_TRAINER, "default_root_dir": str(root / "run")},
        "ema": {"enabled": True, "decay": 0.5},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(overrides))
    args = ["--config", CLASSIFIER_YAML, "--config", str(path)]
    assert _run(["fit", *args]) == 0
    return args, root / "run"


def test_the_subcommand_writes_the_curve_next_to_the_checkpoint_and_logs_it(fitted):
    args, run = fitted
    extra = ["--ckpt_path", "last", "--eps", "[0, 0.1, 0.3]", "--steps", "3", "--num_examples", "40"]
    assert _run(["robustness", *args, *extra]) == 0
    out = run / "robustness"
    content = json.loads((out / "robustness.json").read_text())
    rows = content["rows"]
    assert [r["eps"] for r in rows] == [0.0, 0.1, 0.3]
    assert all(r["num_examples"] == 40 and r["steps"] == 3 and r["objective"] == "loss" for r in rows)
    assert rows[0]["accuracy_pgd"] == rows[0]["accuracy_clean"]
    assert rows[2]["objective_pgd"] > rows[2]["objective_noise"]
    assert content["title"].startswith("Classifier: PGD-3 (linf) on loss, 40 test examples")
    assert (out / "robustness.png").is_file()
    with Image.open(out / "examples.png") as image:  # clean and adversarial rows of 8 digits
        assert image.size == (2 + 8 * 30, 2 + 2 * 30)
    headers = [p.read_text().splitlines()[0].split(",") for p in (run / "csv").glob("version_*/metrics.csv")]
    assert any("robustness/accuracy_pgd@eps=0.3" in header for header in headers)


def test_the_subcommand_attacks_the_ema_weights(fitted):
    _, run = fitted
    ckpt = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)
    shadow = checkpoint["callbacks"]["EMA"]["shadow"]
    from lit_genai.metrics.classifier import DomainClassifier

    model = Classifier(DomainClassifier(width=4, feature_dim=16))
    assert load_for_evaluation(model, str(ckpt)) is True
    torch.testing.assert_close(model.net.state_dict(), shadow)
    trained = checkpoint["state_dict"]["net.fc.weight"]
    assert not torch.equal(trained, shadow["fc.weight"])  # the test is not vacuous
    from lit_genai.callbacks.ema import EMA

    trainer = Trainer(callbacks=[EMA(enabled=False)], logger=False, enable_progress_bar=False)
    assert load_for_evaluation(model, str(ckpt), trainer) is False
    torch.testing.assert_close(model.net.fc.weight, trained)


def test_the_subcommand_output_dir_and_l2(fitted, tmp_path):
    args, _ = fitted
    out = tmp_path / "elsewhere"
    extra = ["--ckpt_path", "last", "--eps", "[1.0]", "--norm", "l2", "--steps", "2", "--num_examples", "8"]
    assert _run(["robustness", *args, *extra, "--output_dir", str(out)]) == 0
    (row,) = json.loads((out / "robustness.json").read_text())["rows"]
    assert row["norm"] == "l2" and row["num_examples"] == 8


@pytest.mark.parametrize(
    "extra, code, message",
    [
        (
            ["--ckpt_path", "last", "--objective", "latent"],
            1,
            "lit-genai: error: objective 'latent' needs Classifier.encode(), which Classifier does not "
            "have: set --objective to one it supports (loss)",
        ),
        (
            [],
            1,
            "lit-genai: error: robustness attacks a trained model: pass --ckpt_path (a checkpoint file, "
            "or 'last')",
        ),
        (["--ckpt_path", "last", "--objective", "elbo"], 2, "lit-genai: error: "),
    ],
    ids=["missing-method", "no-checkpoint", "unknown-objective"],
)
def test_bad_subcommand_input_is_one_clear_error(fitted, extra, code, message, capsys):
    args, _ = fitted
    capsys.readouterr()
    assert _run(["robustness", *args, *extra]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(message)
    if code == 1:
        assert len(err) == 1 and err[0] == message
    else:
        assert "objective" in err[0] and "elbo" in err[0]
        assert err[-1] == "Run 'lit-genai robustness --help' for the options."


def test_the_subcommand_attacks_the_inputs_the_model_is_trained_on(tmp_path, monkeypatch):
    # A Bernoulli VAE models binarised digits: its attack starts from them, not from grey levels.
    import lit_genai.adversarial.command as command
    from lit_genai.adversarial.curves import example_rows
    from lit_genai.data import MNIST5k
    from lit_genai.nn.vae import MLPDecoder, MLPEncoder
    from lit_genai.vae import VAE

    vae = VAE(
        MLPEncoder(hidden=[16], latent_dim=4),
        MLPDecoder(hidden=[16], latent_dim=4),
        binarization="dynamic",
    )
    seen = []
    real_curve = command.robustness_curve

    def spy(module, batches, *args, **kwargs):
        seen.extend(x for x, _ in batches)
        return real_curve(module, batches, *args, **kwargs)

    monkeypatch.setattr(command, "robustness_curve", spy)
    trainer = command.TrainerWithRobustness(
        logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    data = MNIST5k(batch_size=16)
    rows = trainer.robustness(vae, data, eps=[0.0, 0.2], steps=2, num_examples=16, output_dir=str(tmp_path))
    (x,) = seen
    assert x.shape == (16, 1, 28, 28) and set(x.unique().tolist()) == {-1.0, 1.0}
    again = vae.prepare_inputs(next(iter(data.test_dataloader()))[0], torch.Generator().manual_seed(0))
    assert torch.equal(again, x)  # the seeded binarisation of the first test digits
    assert rows[1]["objective_pgd"] > rows[1]["objective_clean"]
    with Image.open(tmp_path / "examples.png") as image:  # clean, adversarial, both reconstructions
        assert image.size == (2 + 8 * 30, 2 + 4 * 30)
    shown = example_rows(vae, x[:3], None, 0.2, steps=2, objective="target_reconstruction")
    assert list(shown) == [
        "clean",
        "adversarial",
        "reconstruction of clean",
        "reconstruction of adversarial",
        "target",
    ]
    assert (shown["adversarial"] - x[:3]).abs().max() <= 0.2 + 1e-6
    assert torch.equal(shown["target"], x[:3].roll(1, 0))
