"""Mask schedules of MaskGIT (sec. 3.2, 4.3): endpoints, monotonicity, closed forms, training counts."""

import math

import pytest
import torch

from lit_genai.errors import ConfigError
from lit_genai.masked.schedules import LOG_BASE, SCHEDULES, mask_schedule, num_to_mask

GRID = torch.linspace(0.0, 1.0, 2001, dtype=torch.float64)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_schedule_masks_all_at_0_none_at_1_and_never_rises(name, dtype):
    gamma = mask_schedule(GRID.to(dtype), name)
    assert gamma.dtype == dtype
    assert gamma[0].item() == 1.0 and gamma[-1].item() == 0.0  # exactly
    assert bool((gamma.diff() <= 0).all())
    assert bool(((gamma >= 0) & (gamma <= 1)).all())


@pytest.mark.parametrize(
    ("name", "r", "expected"),
    [
        ("cosine", 0.5, math.cos(math.pi / 4)),
        ("linear", 0.3, 0.7),
        ("square", 0.5, 0.75),
        ("cubic", 0.5, 0.875),
        ("sqrt", 0.25, 0.5),
        # log: the reference -log_b(r') at r' = 1/b + (1 - 1/b) r; r' = 1/16 gives 1/2 for b = 256.
        ("log", (1 / 16 - 1 / LOG_BASE) / (1 - 1 / LOG_BASE), 0.5),
        # exp: the reference 1 - b^(r - 1) over 1 - 1/b; at r = 1/2, (b - 16) / (b - 1).
        ("exp", 0.5, (LOG_BASE - 16) / (LOG_BASE - 1)),
    ],
)
def test_closed_forms(name, r, expected):
    assert mask_schedule(torch.tensor(r, dtype=torch.float64), name).item() == pytest.approx(
        expected, rel=1e-12
    )


def test_the_log_and_exp_schedules_are_the_reference_formulas_rescaled():
    b, r = LOG_BASE, GRID[1:-1]
    reference_log = -torch.log2(1 / b + (1 - 1 / b) * r) / math.log2(b)
    reference_exp = 1 - torch.exp2(-math.log2(b) * (1 - r))  # maskgit libml/mask_schedule.py
    torch.testing.assert_close(mask_schedule(r, "log"), reference_log)
    torch.testing.assert_close(mask_schedule(r, "exp"), reference_exp / (1 - 1 / b))


def test_concave_schedules_lie_above_linear_and_convex_ones_below():
    # MaskGIT sec. 4.3 groups them so: cosine, square, cubic, exp concave; sqrt, log convex.
    linear = mask_schedule(GRID, "linear")
    for name in ("cosine", "square", "cubic", "exp"):
        assert bool((mask_schedule(GRID, name) >= linear - 1e-12).all()), name
    for name in ("sqrt", "log"):
        assert bool((mask_schedule(GRID, name) <= linear + 1e-12).all()), name


def test_num_to_mask_is_the_ceiling_clamped_to_1_and_n():
    r = torch.tensor([0.0, 0.5, 0.9999999, 0.25])
    counts = num_to_mask(r, 10, "cosine")
    assert counts.dtype == torch.long
    # ceil(10 cos(pi r / 2)): 10, ceil(7.07) = 8, ceil(1.6e-6) = 1, ceil(9.24) = 10.
    assert counts.tolist() == [10, 8, 1, 10]
    assert num_to_mask(torch.tensor([0.5]), 7, "linear").tolist() == [4]  # ceil(3.5)
    many = num_to_mask(torch.rand(10_000, generator=torch.Generator().manual_seed(0)), 16, "sqrt")
    assert int(many.min()) >= 1 and int(many.max()) <= 16


def test_an_unknown_schedule_is_one_config_error():
    with pytest.raises(ConfigError, match="choose one of cosine"):
        mask_schedule(torch.tensor(0.5), "quartic")
