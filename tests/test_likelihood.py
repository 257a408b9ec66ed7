"""Tests of the shared likelihood metrics and of the DDPM variational bound in bits/dim."""

import math

import pytest
import torch

from lit_genai.diffusion.losses import prediction_target
from lit_genai.diffusion.schedules import cosine_betas, extract, linear_betas, schedule_tensors
from lit_genai.diffusion.vlb import reverse_log_variance, vlb_terms
from lit_genai.metrics.likelihood import (
    bits_per_dim,
    dequantized_bits_per_dim,
    discretized_gaussian_log_likelihood,
    normal_kl,
    perplexity,
    uniform_dequantization_offset,
)

PIXELS = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # (256,) every 8-bit value in [-1, 1]


def _normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


# ---------------------------------------------------------------- conversions


def test_bits_per_dim_and_perplexity_golden_values():
    # A uniform distribution over 256 values per dim costs exactly 8 bits/dim.
    D = 3 * 32 * 32
    nll = torch.tensor([D * math.log(256.0), 0.0])
    torch.testing.assert_close(bits_per_dim(nll, D), torch.tensor([8.0, 0.0]))
    # A uniform guess over a 65-character vocabulary has perplexity 65.
    assert perplexity(torch.tensor(math.log(65.0))).item() == pytest.approx(65.0)
    with pytest.raises(ValueError, match="num_dims"):
        bits_per_dim(nll, 0)


def test_dequantization_offset_turns_uniform_density_into_eight_bits():
    # The uniform density on [-1, 1)^D has NLL D ln 2; on 8-bit data it is the uniform P(k) = 256^-D.
    D = 784
    assert uniform_dequantization_offset(D) == pytest.approx(D * math.log(128.0))
    assert uniform_dequantization_offset(D, bin_width=2 / 255) == pytest.approx(D * math.log(127.5))
    bpd = dequantized_bits_per_dim(torch.tensor([D * math.log(2.0)]), D)
    assert bpd.item() == pytest.approx(8.0)


def test_normal_kl_identities_and_hand_computed_value():
    mean, logvar = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(normal_kl(mean, logvar, mean, logvar), torch.zeros(5))
    # KL(N(1, 1) || N(0, 4)) = ln 2 + (1 + 1) / 8 - 1/2
    kl = normal_kl(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(math.log(4.0)))
    assert kl.item() == pytest.approx(math.log(2.0) + 2 / 8 - 0.5)
    assert bool((normal_kl(mean, logvar, torch.zeros(5), torch.zeros(5)) > 0).all())


# ---------------------------------------------------------------- discretised Gaussian


@pytest.mark.parametrize(
    ("mean", "scale"),
    [(0.0, 1.0), (0.3, 0.01), (-0.99, 0.2), (1.7, 0.05), (-0.5, 1e-4), (0.0, 30.0)],
)
def test_discretized_gaussian_probabilities_sum_to_one(mean, scale):
    log_probs = discretized_gaussian_log_likelihood(
        PIXELS, torch.tensor(mean, dtype=torch.float64), torch.tensor(math.log(scale), dtype=torch.float64)
    )  # (256,)
    assert bool((log_probs <= 0).all())
    assert torch.logsumexp(log_probs, dim=0).item() == pytest.approx(0.0, abs=1e-9)


def test_discretized_gaussian_golden_values_and_sharp_decoder():
    x = torch.tensor([-1.0, 0.0, 1.0, 1.0])
    means = torch.tensor([-1.0, 0.0, 1.0, 1.5])  # the last mean lies beyond the top bin
    sharp = discretized_gaussian_log_likelihood(x, means, torch.full((4,), math.log(1e-4)))
    torch.testing.assert_close(sharp, torch.zeros(4), atol=1e-6, rtol=0)
    # A bin of half-width 1/255 under scale 1/255: interior 2 Phi(1) - 1, edge Phi(1).
    log_probs = discretized_gaussian_log_likelihood(x[:3], means[:3], torch.full((3,), math.log(1 / 255)))
    expected = [math.log(_normal_cdf(1.0)), math.log(2 * _normal_cdf(1.0) - 1), math.log(_normal_cdf(1.0))]
    torch.testing.assert_close(log_probs, torch.tensor(expected), atol=1e-6, rtol=1e-6)


def test_discretized_gaussian_far_tail_is_finite_with_finite_gradients():
    # 0.5 is 1000 standard deviations from the mean: improved-diffusion's clamp would say log(1e-12).
    means = torch.tensor([0.0, 0.0, 0.0], requires_grad=True)
    x = torch.tensor([0.5, -1.0, 1.0])
    log_probs = discretized_gaussian_log_likelihood(x, means, torch.full((3,), math.log(5e-4)))
    assert bool(torch.isfinite(log_probs).all()) and log_probs[0].item() < -1e5
    log_probs.sum().backward()
    assert means.grad is not None and bool(torch.isfinite(means.grad).all())


# ---------------------------------------------------------------- the DDPM bound


def _point_mass_oracle(prediction: str, x0_star: torch.Tensor, alpha_bar: torch.Tensor):
    """The exact denoiser when the data distribution is the single point x0_star."""

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = extract(alpha_bar, t, x_t.ndim)  # (B, 1, 1, 1)
        eps = (x_t - ab.sqrt() * x0_star) / (1 - ab).sqrt()
        return prediction_target(prediction, x0_star.expand_as(x_t), eps, ab)

    return model_fn


def _pixels(*shape: int) -> torch.Tensor:
    """Random 8-bit images on the [-1, 1] grid, including both edge values."""
    k = torch.randint(0, 256, shape)
    k.view(-1)[:2] = torch.tensor([0, 255])
    return k / 127.5 - 1


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_oracle_bound_is_prior_plus_decoder_plus_variance_mismatch(prediction, variance):
    """For point-mass data the oracle's means are exact, so each term is known in closed form.

    The KL terms keep only the variance mismatch 0.5 (r - 1 - ln r), r = beta tilde_t / sigma_t^2:
    zero for sigma^2 = beta tilde. The decoder is a Gaussian centred on the pixel with variance
    beta tilde at index 1, whose bin of half-width 1/255 holds 2 Phi(h) - 1 (Phi(h) at the edges),
    h = (1/255) / sigma: not a sharp decoder, so L_0 is far from 0 bits/dim.
    """
    sched = schedule_tensors(linear_betas(40))
    x0 = _pixels(2, 1, 4, 4)
    model_fn = _point_mass_oracle(prediction, x0, sched["alpha_bar"].float())
    out = vlb_terms(
        model_fn, x0, sched, prediction, variance=variance, generator=torch.Generator().manual_seed(0)
    )
    for key in ("prior_bpd", "decoder_bpd", "vb_bpd", "total_bpd"):
        assert out[key].shape == (2,) and out[key].dtype == torch.float32, key

    ab_T = sched["alpha_bar"][-1].item()
    prior = 0.5 * (-math.log(1 - ab_T) - ab_T + ab_T * x0.double().pow(2)).flatten(1).mean(1) / math.log(2)
    h = (1 / 255) / math.sqrt(sched["posterior_variance"][1].item())
    edge = x0.abs().flatten(1) > 0.999  # (B, D)
    decoder_nats = torch.where(edge, -math.log(_normal_cdf(h)), -math.log(2 * _normal_cdf(h) - 1))
    decoder = decoder_nats.double().mean(1) / math.log(2)
    ratio = sched["posterior_variance"][1:] / reverse_log_variance(sched, variance)[1:].exp()  # (T-1,)
    mismatch = (0.5 * (ratio - 1 - ratio.log())).sum().item() / math.log(2)
    if variance == "beta_tilde":
        assert mismatch == pytest.approx(0.0, abs=1e-12)

    torch.testing.assert_close(out["prior_bpd"].double(), prior, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["decoder_bpd"].double(), decoder, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["vb_bpd"].double(), decoder + mismatch, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(out["total_bpd"], out["prior_bpd"] + out["vb_bpd"])


def test_useless_model_has_a_much_larger_bound_than_the_oracle():
    """eps = 0 (what an untrained UNet with a zero-initialised output layer predicts) vs the oracle.

    With T = 200 the oracle's ~3 bits/dim are almost all its decoder term (previous test); eps = 0
    pays ~8-9 bits/dim, about a uniform guess over 256 values.
    """
    sched = schedule_tensors(linear_betas(200))
    x0 = _pixels(2, 1, 4, 4)
    gen = torch.Generator().manual_seed(0)
    oracle = vlb_terms(_point_mass_oracle("eps", x0, sched["alpha_bar"].float()), x0, sched, generator=gen)
    useless = vlb_terms(lambda x_t, t: torch.zeros_like(x_t), x0, sched, generator=gen)  # eps = 0
    assert bool((useless["total_bpd"] > oracle["total_bpd"] + 4.0).all())
    torch.testing.assert_close(useless["prior_bpd"], oracle["prior_bpd"])  # the prior does not see the model


def test_sampled_steps_give_an_unbiased_estimate_of_the_full_bound():
    """Mean over many examples of the k-step estimate = mean of the exact bound (up to noise).

    The batch repeats one image, so its examples are independent draws of both estimators: their
    means differ by sampling noise only, checked against 4 standard errors.
    """
    sched = schedule_tensors(cosine_betas(20))
    n = 2000
    x0 = _pixels(1, 1, 2, 2).expand(n, -1, -1, -1)

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # a poor, t-dependent denoiser
        return 0.8 * torch.tanh(x_t) * (1 - t.view(-1, 1, 1, 1) / 40)

    exact = vlb_terms(model_fn, x0, sched, generator=torch.Generator().manual_seed(1))
    sampled = vlb_terms(model_fn, x0, sched, timesteps=3, generator=torch.Generator().manual_seed(2))
    for key in ("prior_bpd", "decoder_bpd", "vb_bpd", "total_bpd"):
        assert sampled[key].shape == (n,), key
    kl_exact = exact["vb_bpd"] - exact["decoder_bpd"]
    kl_sampled = sampled["vb_bpd"] - sampled["decoder_bpd"]
    assert kl_sampled.std() > 2 * kl_exact.std(), "the estimate should be noisier than the exact sum"
    standard_error = math.sqrt((kl_exact.var() + kl_sampled.var()).item() / n)
    assert abs(kl_sampled.mean().item() - kl_exact.mean().item()) < 4 * standard_error
    torch.testing.assert_close(sampled["prior_bpd"], exact["prior_bpd"])
    # k >= T - 1 is the exact bound.
    exact = vlb_terms(model_fn, x0[:4], sched, generator=torch.Generator().manual_seed(3))
    full = vlb_terms(model_fn, x0[:4], sched, timesteps=19, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(full["total_bpd"], exact["total_bpd"])


def test_bound_counts_model_calls_and_rejects_bad_arguments():
    sched = schedule_tensors(cosine_betas(10))
    calls: list[torch.Tensor] = []

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(t)
        return torch.zeros_like(x_t)

    x0 = _pixels(3, 1, 2, 2)
    vlb_terms(model_fn, x0, sched)
    assert len(calls) == 10 and sorted(int(t[0]) for t in calls) == list(range(10))
    calls.clear()
    vlb_terms(model_fn, x0, sched, timesteps=2)
    assert len(calls) == 3 and bool((calls[0] == 0).all())  # decoder first, then 2 sampled KL terms
    assert all(bool(((t >= 1) & (t <= 9)).all()) for t in calls[1:])
    with pytest.raises(ValueError, match="timesteps"):
        vlb_terms(model_fn, x0, sched, timesteps=0)
    with pytest.raises(ValueError, match="schedule_tensors"):
        vlb_terms(model_fn, x0, {"betas": sched["betas"]})
    with pytest.raises(ValueError, match="variance"):
        vlb_terms(model_fn, x0, sched, variance="learned")  # type: ignore[arg-type]
