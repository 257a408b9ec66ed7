"""Tests of the pure GAN losses and penalties (lit_genai.gan.losses): hand-computed values, signs,
analytic gradient penalties, finite differences, loss scaling and autocast."""

import math

import pytest
import torch
from torch import nn

from lit_genai.errors import ConfigError
from lit_genai.gan.losses import discriminator_loss, generator_loss, gradient_penalty, r1_penalty

REAL, FAKE = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


# ---------------------------------------------------------------- adversarial losses


@pytest.mark.parametrize(
    "kind, real, fake, gen",
    [
        # D: -log sigmoid(D(x)) - log(1 - sigmoid(D(G(z)))); G: -log sigmoid(D(G(z)))
        ("non_saturating", [softplus(-2), softplus(1)], [softplus(0.5), softplus(-3)],
         [softplus(-0.5), softplus(3)]),
        # D: relu(1 - D(x)) + relu(1 + D(G(z))); G: -D(G(z))
        ("hinge", [0.0, 2.0], [1.5, 0.0], [-0.5, 3.0]),
        # D: D(G(z)) - D(x); G: -D(G(z))
        ("wasserstein", [-2.0, 1.0], [0.5, -3.0], [-0.5, 3.0]),
    ],
)  # fmt: skip
def test_losses_match_hand_computed_values(kind, real, fake, gen):
    terms = discriminator_loss(kind, REAL, FAKE)
    assert set(terms) == {"loss", "real", "fake"}
    torch.testing.assert_close(terms["real"], torch.tensor(real))
    torch.testing.assert_close(terms["fake"], torch.tensor(fake))
    torch.testing.assert_close(terms["loss"], torch.tensor(real) + torch.tensor(fake))
    torch.testing.assert_close(generator_loss(kind, FAKE), torch.tensor(gen))


@pytest.mark.parametrize("kind", ["non_saturating", "hinge", "wasserstein"])
def test_loss_signs_a_better_critic_and_a_better_generator_score_lower(kind):
    weak = discriminator_loss(kind, torch.tensor([0.1]), torch.tensor([-0.1]))["loss"]
    strong = discriminator_loss(kind, torch.tensor([0.9]), torch.tensor([-0.9]))["loss"]
    assert strong < weak  # real scored higher and fake lower: the critic's loss goes down
    assert generator_loss(kind, torch.tensor([0.5])) < generator_loss(kind, torch.tensor([-0.5]))


def test_non_saturating_generator_gradient_does_not_vanish_when_d_wins():
    fake = torch.tensor([-10.0], requires_grad=True)  # D is sure the sample is fake
    generator_loss("non_saturating", fake).sum().backward()
    assert fake.grad.item() == pytest.approx(-1.0, abs=1e-4)  # log(1 - D) would give ~ -4.5e-5


def test_losses_are_stable_for_large_logits_and_accept_b1_shapes():
    big = torch.tensor([[100.0], [-100.0]])  # (B, 1) critic output
    terms = discriminator_loss("non_saturating", big, -big)
    assert terms["loss"].shape == (2,) and torch.isfinite(terms["loss"]).all()
    torch.testing.assert_close(terms["loss"], torch.tensor([0.0, 200.0]))
    assert torch.isfinite(generator_loss("non_saturating", big)).all()


def test_losses_are_float32_for_half_logits():
    terms = discriminator_loss("hinge", REAL.bfloat16(), FAKE.bfloat16())
    assert terms["loss"].dtype == torch.float32
    assert generator_loss("hinge", FAKE.half()).dtype == torch.float32


def test_bad_kind_and_mismatched_batches_raise():
    with pytest.raises(ConfigError, match="non_saturating, hinge, wasserstein"):
        discriminator_loss("minimax", REAL, FAKE)
    with pytest.raises(ConfigError):
        generator_loss("lsgan", FAKE)
    with pytest.raises(ValueError, match="same batch size"):
        discriminator_loss("hinge", REAL, torch.zeros(3))
    with pytest.raises(ValueError, match="one per example"):
        generator_loss("hinge", torch.zeros(2, 2))


# ---------------------------------------------------------------- gradient penalties


class Linear(nn.Module):
    """D(x) = <w, x>: its gradient is w everywhere."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1)  # (B,)


def _quadratic(a: torch.Tensor, b: torch.Tensor):
    """D(x) = sum(a x^2) + <b, x> per example; gradient 2 a x + b."""
    return lambda x: (a * x**2 + b * x).flatten(1).sum(1)


def _conv_critic() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(8, 8, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 1), nn.Flatten(0),
    )  # fmt: skip


def test_gradient_penalty_of_a_linear_critic_is_analytic_and_trains_the_critic():
    critic = Linear((3, 4, 4))
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    gp = gradient_penalty(critic, real, fake)
    norm_w = critic.w.detach().norm()
    assert gp.shape == (5,) and gp.dtype == torch.float32
    torch.testing.assert_close(gp, ((norm_w - 1) ** 2).expand(5))
    gp.mean().backward()  # create_graph: the penalty reaches the critic's weights
    torch.testing.assert_close(critic.w.grad, 2 * (norm_w - 1) * critic.w.detach() / norm_w)


def test_gradient_penalty_interpolates_per_example_and_is_reproducible():
    seen = []
    critic = Linear((2, 3))

    def recording(x):
        seen.append(x.detach())
        return critic(x)

    real, fake = torch.randn(4, 2, 3), torch.randn(4, 2, 3)
    gradient_penalty(recording, real, fake, generator=torch.Generator().manual_seed(7))
    gradient_penalty(recording, real, fake, generator=torch.Generator().manual_seed(7))
    gradient_penalty(recording, real, fake, generator=torch.Generator().manual_seed(8))
    alpha = ((seen[0] - real) / (fake - real)).flatten(1)  # (B, D): one alpha per example
    torch.testing.assert_close(alpha, alpha[:, :1].expand_as(alpha))
    assert ((alpha >= 0) & (alpha <= 1)).all()
    torch.testing.assert_close(seen[0], seen[1])  # same generator seed, same interpolates
    assert not torch.allclose(seen[0], seen[2])


def test_gradient_penalty_of_a_quadratic_critic_matches_finite_differences():
    torch.manual_seed(1)
    shape = (3, 2, 2, 2)
    a, b = torch.randn(shape[1:], dtype=torch.float64), torch.randn(shape[1:], dtype=torch.float64)
    critic = _quadratic(a, b)
    x = torch.randn(shape, dtype=torch.float64)
    gp = gradient_penalty(critic, x, x)  # real == fake: x_hat = x whatever alpha
    assert gp.dtype == torch.float64
    h, grads = 1e-6, torch.zeros_like(x).flatten(1)
    for i in range(grads.shape[1]):  # central differences, one coordinate at a time
        e = torch.zeros_like(grads)
        e[:, i] = h
        grads[:, i] = (critic(x + e.view(shape)) - critic(x - e.view(shape))) / (2 * h)
    torch.testing.assert_close(gp, (grads.norm(dim=1) - 1) ** 2, rtol=1e-7, atol=1e-9)


def test_r1_penalty_is_the_squared_gradient_norm():
    critic = Linear((3, 4, 4))
    real = torch.randn(5, 3, 4, 4)
    r1 = r1_penalty(critic, real)
    torch.testing.assert_close(r1, (critic.w.detach().norm() ** 2).expand(5))
    r1.mean().backward()
    torch.testing.assert_close(critic.w.grad, 2 * critic.w.detach())  # d||w||^2/dw
    a, b = torch.randn(3, 4, 4), torch.randn(3, 4, 4)
    expected = (2 * a * real + b).flatten(1).pow(2).sum(1)  # ||2 a x + b||^2
    torch.testing.assert_close(r1_penalty(_quadratic(a, b), real), expected)


def test_loss_scale_does_not_change_the_penalties_in_float32():
    critic = _conv_critic()
    real, fake = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    ref = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(0))
    for scale in (1024.0, torch.tensor(65536.0)):
        gp = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(0), scale=scale)
        torch.testing.assert_close(gp, ref)
        torch.testing.assert_close(r1_penalty(critic, real, scale=scale), r1_penalty(critic, real))


def test_penalties_under_bf16_autocast_are_finite_float32_and_close_to_fp32():
    critic = _conv_critic()
    real, fake = torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8)
    ref = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(0))
    ref_r1 = r1_penalty(critic, real)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gp = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(0))
        r1 = r1_penalty(critic, real)
    assert gp.dtype == r1.dtype == torch.float32
    assert torch.isfinite(gp).all() and torch.isfinite(r1).all()
    torch.testing.assert_close(gp, ref, rtol=0.05, atol=0.01)
    torch.testing.assert_close(r1, ref_r1, rtol=0.05, atol=1e-4)
    gp.mean().backward()  # the penalty reaches every weight (biases do not move a piecewise-linear
    # critic's input gradient)
    weights = [p for name, p in critic.named_parameters() if name.endswith("weight")]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in weights)


def test_loss_scale_rescues_float16_gradients_that_would_underflow():
    # Two linear layers with weights 3e-5: the input gradient, 16 * (3e-5)^2 = 1.4e-8 per coordinate,
    # is below float16's smallest subnormal (6e-8)
    critic = nn.Sequential(nn.Linear(16, 16, bias=False), nn.Linear(16, 1, bias=False), nn.Flatten(0))
    nn.init.constant_(critic[0].weight, 3e-5)
    nn.init.constant_(critic[1].weight, 3e-5)
    real = torch.randn(4, 16)
    ref = r1_penalty(critic, real)
    torch.testing.assert_close(ref, torch.full((4,), 16 * (16 * 9e-10) ** 2))
    with torch.autocast("cpu", dtype=torch.float16):
        unscaled = r1_penalty(critic, real)
        scaled = r1_penalty(critic, real, scale=2.0**14)  # as GradScaler's scale under 16-mixed
    assert (unscaled == 0).all()  # the gradient underflowed to zero
    torch.testing.assert_close(scaled, ref, rtol=0.02, atol=0.0)


def test_penalty_errors():
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(Linear((3,)), torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="one logit per example"):
        r1_penalty(lambda x: x, torch.zeros(2, 3))
