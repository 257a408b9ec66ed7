"""Binarisation of grey images: values, dynamic means, static determinism, threshold."""

import pytest
import torch

from lit_genai.data.binarize import binarize, static_uniform
from lit_genai.errors import ConfigError


def _grey(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 256, (n, 1, 28, 28), generator=g)
    return k.float() / 127.5 - 1  # (n, 1, 28, 28) on the 8-bit grid


@pytest.mark.parametrize("mode", ["dynamic", "static", "threshold"])
def test_values_are_minus_one_or_one_with_the_input_shape_and_dtype(mode):
    x = _grey()
    out = binarize(x, mode)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert set(out.unique().tolist()) == {-1.0, 1.0}
    # black and white pixels stay as they are in every mode
    edges = torch.tensor([-1.0, 1.0]).view(1, 1, 1, 2)
    assert torch.equal(binarize(edges, mode), edges)


def test_dynamic_mean_is_the_grey_level_and_draws_differ():
    levels = torch.tensor([0.1, 0.3, 0.5, 0.9])
    x = (levels * 2 - 1).view(4, 1, 1, 1).expand(4, 1, 100, 100)  # 10^4 pixels per grey level
    gen = torch.Generator().manual_seed(0)
    white = (binarize(x, "dynamic", gen) == 1).float().mean(dim=(1, 2, 3))
    assert torch.allclose(white, levels, atol=0.02)  # 4 standard errors at most
    a = binarize(x, "dynamic", torch.Generator().manual_seed(1))
    b = binarize(x, "dynamic", torch.Generator().manual_seed(1))
    c = binarize(x, "dynamic", torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_dynamic_uses_given_uniform_noise():
    x = torch.full((1, 1, 1, 3), 0.0)  # grey level 1/2
    u = torch.tensor([0.2, 0.5, 0.7]).view(1, 1, 1, 3)
    assert binarize(x, "dynamic", uniform=u).flatten().tolist() == [1.0, -1.0, -1.0]


def test_static_is_a_function_of_each_image_whatever_the_batch():
    x = _grey(16)
    once = binarize(x, "static")
    assert torch.equal(once, binarize(x.clone(), "static"))  # across calls
    perm = torch.randperm(16)
    assert torch.equal(binarize(x[perm], "static"), once[perm])  # across batch orders
    assert torch.equal(binarize(x[3:4], "static"), once[3:4])  # alone or in a batch
    other = torch.cat([_grey(5, seed=1), x[7:8]])
    assert torch.equal(binarize(other, "static")[-1], once[7])  # among other images
    # a different image gets a different noise field
    assert not torch.equal(static_uniform(x[:1]), static_uniform(x[1:2]))


def test_static_noise_is_uniform_so_the_mean_is_the_grey_level():
    levels = torch.tensor([0.1, 0.3, 0.5, 0.9])
    # different images of each grey level: one pixel per image differs, so each has its own noise
    x = (levels * 2 - 1).view(4, 1, 1, 1, 1).expand(4, 16, 1, 28, 28).clone()
    x[:, :, 0, 0, 0] = torch.linspace(-1, 1, 16)
    u = static_uniform(x.flatten(0, 1))  # (64, 1, 28, 28)
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.std()) - (1 / 12) ** 0.5) < 0.01
    white = (binarize(x.flatten(0, 1), "static") == 1).float().view(4, -1).mean(dim=1)
    assert torch.allclose(white, levels, atol=0.02)


def test_threshold_is_above_half_grey():
    x = torch.tensor([-1.0, -0.2, 0.0, 0.02, 0.9, 1.0]).view(1, 1, 1, 6)  # (x + 1) / 2 > 0.5 <=> x > 0
    assert binarize(x, "threshold").flatten().tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]


def test_unknown_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="not one of"):
        binarize(torch.zeros(1, 1, 2, 2), "random")
