"""VAE maths against closed forms and torch.distributions: KL, likelihoods, warm-up, free bits, IWAE."""

import math

import pytest
import torch
from torch import distributions as dist

from lit_genai.vae.losses import (
    bernoulli_log_likelihood,
    chunked_iwae_bound,
    discretized_logistic_log_likelihood,
    discretized_logistic_log_prob,
    free_bits_kl,
    gaussian_kl,
    gaussian_log_likelihood,
    gaussian_log_prob,
    iwae_bound,
    kl_weight,
    log_importance_weights,
    standard_normal_kl,
    standard_normal_log_prob,
)

GRID = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # the 256 pixel values in [-1, 1]


# ---------------------------------------------------------------------- KL and Gaussian densities


def test_kl_of_the_prior_to_itself_is_zero():
    zeros = torch.zeros(3, 5)
    assert torch.equal(gaussian_kl(zeros, zeros), torch.zeros(3))
    assert torch.equal(standard_normal_kl(zeros, zeros), torch.zeros(3, 5))


def test_closed_form_kl_matches_torch_and_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mean, logvar = (
        torch.randn(4, 6, generator=g, dtype=torch.float64),
        torch.randn(4, 6, generator=g).double(),
    )
    q = dist.Normal(mean, torch.exp(0.5 * logvar))
    p = dist.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = dist.kl_divergence(q, p).sum(-1)  # (4,)
    assert torch.allclose(gaussian_kl(mean, logvar), expected, atol=1e-12)
    z = q.sample((200_000,))  # (N, 4, 6)
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)  # (4,)
    assert torch.allclose(gaussian_kl(mean, logvar), mc, rtol=0.02, atol=0.02)


def test_diagonal_gaussian_log_prob_matches_normal_with_sample_dims():
    g = torch.Generator().manual_seed(1)
    mean, logvar = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    z = torch.randn(7, 3, 4, generator=g)  # (K, B, D)
    expected = dist.Normal(mean, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)  # (K, B)
    assert torch.allclose(gaussian_log_prob(z, mean, logvar), expected, atol=1e-5)
    assert torch.allclose(gaussian_log_prob(z[0], mean, logvar), expected[0], atol=1e-5)  # (B,)
    assert torch.allclose(standard_normal_log_prob(z), dist.Normal(0.0, 1.0).log_prob(z).sum(-1), atol=1e-5)
    # spatial latents (B, c, h, w): summed over the latent dims only
    m4, z4 = torch.randn(2, 3, 2, 2, generator=g), torch.randn(5, 2, 3, 2, 2, generator=g)
    out = gaussian_log_prob(z4, m4, torch.zeros_like(m4))
    assert out.shape == (5, 2)
    assert torch.allclose(out, dist.Normal(m4, 1.0).log_prob(z4).flatten(2).sum(-1), atol=1e-5)


# ---------------------------------------------------------------------- decoder likelihoods


def test_bernoulli_matches_torch_and_allows_soft_targets():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 1, 4, 4, generator=g) * 3
    target = (torch.rand(3, 1, 4, 4, generator=g) < 0.5).float()
    expected = dist.Bernoulli(logits=logits).log_prob(target).flatten(1).sum(1)
    assert torch.allclose(bernoulli_log_likelihood(logits, target), expected, atol=1e-5)
    soft = torch.rand(3, 1, 4, 4, generator=g)  # grey levels as soft targets: the negative cross-entropy
    p = torch.sigmoid(logits)
    cross = (soft * p.log() + (1 - soft) * (1 - p).log()).flatten(1).sum(1)
    assert torch.allclose(bernoulli_log_likelihood(logits, soft), cross, atol=1e-4)
    # stable for saturated logits
    assert torch.isfinite(
        bernoulli_log_likelihood(torch.full((1, 1, 1, 2), 200.0), torch.zeros(1, 1, 1, 2))
    ).all()


@pytest.mark.parametrize("learned", [False, True])
def test_gaussian_matches_normal(learned):
    g = torch.Generator().manual_seed(3)
    x, mean = torch.rand(2, 1, 3, 3, generator=g) * 2 - 1, torch.rand(2, 1, 3, 3, generator=g) * 2 - 1
    log_scale = torch.randn(1, 3, 3, generator=g) * 0.5 if learned else math.log(0.3)
    scale = torch.exp(torch.as_tensor(log_scale))
    expected = dist.Normal(mean, scale).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(gaussian_log_likelihood(x, mean, log_scale), expected, atol=1e-5)


def _logistic(mean, scale):
    """torch.distributions' logistic: X = mean + scale * logit(U)."""
    transforms = [dist.SigmoidTransform().inv, dist.AffineTransform(loc=mean, scale=scale)]
    return dist.TransformedDistribution(
        dist.Uniform(torch.zeros_like(mean), torch.ones_like(mean)), transforms
    )


@pytest.mark.parametrize("mean, log_scale", [(0.0, -3.0), (0.37, -1.0), (-0.9, 0.5), (0.99, -5.0)])
def test_discretized_logistic_matches_a_cdf_difference_and_sums_to_one(mean, log_scale):
    x = GRID.view(256, 1, 1, 1)  # each pixel value as a one-pixel image
    means = torch.full_like(x, mean)
    log_p = discretized_logistic_log_likelihood(x, means, log_scale)  # (256,)
    assert torch.allclose(log_p.exp().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-10)
    logistic = _logistic(torch.tensor(mean, dtype=torch.float64), torch.tensor(math.exp(log_scale)).double())
    edges = torch.cat([GRID[:-1] + 1 / 255, torch.tensor([math.inf], dtype=torch.float64)])
    upper = torch.where(torch.isinf(edges), torch.ones_like(edges), logistic.cdf(edges.clamp(max=1.0)))
    lower = torch.cat([torch.zeros(1, dtype=torch.float64), upper[:-1]])
    probs = upper - lower  # P(bin) by the CDF, edge bins to +-inf
    significant = probs > 1e-12  # where float64 CDF differences are still accurate
    assert torch.allclose(log_p[significant], probs[significant].log(), atol=1e-6)


def test_discretized_logistic_is_finite_far_from_the_mean_and_for_tiny_scales():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]).view(1, 1, 1, 5)
    for mean, log_scale in [(1.0, -7.0), (-1.0, -7.0), (0.0, 3.0), (5.0, -2.0)]:
        means = torch.full_like(x, mean).requires_grad_(True)
        log_s = torch.tensor(log_scale, requires_grad=True)
        log_p = discretized_logistic_log_prob(x, means, log_s)
        assert torch.isfinite(log_p).all() and (log_p <= 0).all()
        log_p.sum().backward()
        assert torch.isfinite(means.grad).all() and torch.isfinite(log_s.grad)
    # a bin 0.5 away from the mean at scale e^-7 has log-probability about -0.5 / s (logistic tail)
    far = discretized_logistic_log_prob(torch.tensor(0.5), torch.tensor(0.0), -7.0)
    assert float(far) == pytest.approx(-(0.5 - 1 / 255) * math.exp(7.0), rel=1e-3)


def test_discretized_logistic_puts_the_mass_on_the_mean_bin_for_a_tiny_scale():
    x = GRID[100].float().view(1, 1, 1, 1)
    assert float(discretized_logistic_log_likelihood(x, x.clone(), -9.0)) == pytest.approx(0.0, abs=1e-5)


# ---------------------------------------------------------------------- warm-up and free bits


def test_kl_weight_rises_linearly_to_beta():
    assert [kl_weight(s, 10, 2.0) for s in (0, 5, 10, 50)] == [0.0, 1.0, 2.0, 2.0]
    assert kl_weight(0, 0, 0.5) == 0.5  # no warm-up


def test_free_bits_clamps_the_batch_mean_kl_of_each_dimension():
    kl = torch.tensor([[0.1, 2.0, 0.4], [0.3, 4.0, 0.8]], requires_grad=True)  # (B=2, D=3)
    # batch means (0.2, 3.0, 0.6); lambda = 0.5 lifts the first
    value = free_bits_kl(kl, 0.5)
    assert float(value.detach()) == pytest.approx(0.5 + 3.0 + 0.6)
    value.backward()
    assert torch.equal(kl.grad, torch.tensor([[0.0, 0.5, 0.5], [0.0, 0.5, 0.5]]))  # no pull below lambda
    # off: the plain batch-mean KL
    assert float(free_bits_kl(kl.detach(), 0.0)) == pytest.approx(float(kl.detach().sum(1).mean()))


# ---------------------------------------------------------------------- importance weighting


def test_iwae_bound_is_logsumexp_minus_log_k_and_the_elbo_at_k_1():
    g = torch.Generator().manual_seed(4)
    log_w = torch.randn(5, 3, generator=g, dtype=torch.float64) * 10  # (K, B)
    expected = torch.log(torch.exp(log_w).mean(0))
    assert torch.allclose(iwae_bound(log_w), expected)
    assert torch.equal(iwae_bound(log_w[:1]), log_w[0])  # K = 1: the single-sample ELBO
    assert (iwae_bound(log_w) >= log_w.mean(0)).all()  # Jensen: L_k >= the average ELBO
    assert torch.allclose(iwae_bound(log_w.T, dim=1), expected)


@pytest.mark.parametrize("chunk", [None, 0, 1, 7, 100, 5000])
def test_chunked_bound_equals_the_unchunked_one(chunk):
    g = torch.Generator().manual_seed(5)
    all_w = torch.randn(100, 4, generator=g, dtype=torch.float64) * 50 - 300  # (K, B), would underflow exp
    sizes, done = [], [0]

    def log_weight_fn(k):
        sizes.append(k)
        out = all_w[done[0] : done[0] + k]
        done[0] += k
        return out

    value = chunked_iwae_bound(log_weight_fn, 100, chunk)
    assert torch.allclose(value, iwae_bound(all_w), atol=1e-10, rtol=0)
    assert sum(sizes) == 100 and max(sizes) <= (100 if not chunk else chunk)


def test_log_importance_weights_of_the_exact_posterior_are_log_p_x():
    # one-dimensional linear Gaussian: z ~ N(0, 1), x | z ~ N(w z, s^2); p(x) = N(0, w^2 + s^2)
    w, s, x = 2.0, 0.5, torch.tensor([0.7, -1.3], dtype=torch.float64)
    post_var = 1 / (1 + w**2 / s**2)
    mean, logvar = (
        (post_var * w * x / s**2)[:, None],
        torch.full((2, 1), math.log(post_var), dtype=torch.float64),
    )
    z = mean + math.sqrt(post_var) * torch.randn(9, 2, 1, dtype=torch.float64)  # (K, B, D)
    log_lik = dist.Normal(w * z[..., 0], s).log_prob(x)  # (K, B)
    log_w = log_importance_weights(log_lik, z, mean, logvar)
    log_px = dist.Normal(0.0, math.sqrt(w**2 + s**2)).log_prob(x)
    assert torch.allclose(log_w, log_px.expand(9, 2), atol=1e-10)  # every weight is p(x)
