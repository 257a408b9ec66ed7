"""MaskGIT decoding (sec. 3.2): the number of masks after each step, prompts kept, confidence order,
determinism under generators, classifier-free guidance, and errors."""

import math

import pytest
import torch

from lit_genai.errors import ConfigError
from lit_genai.masked.sampling import kept_masked, maskgit_decode

V, MASK = 6, 6


def random_logits(seed: int = 0, classes: int = 0):
    """logits_fn: fixed random logits per (position, label), whatever the tokens (B, N) -> (B, N, V)."""
    table = torch.randn(classes + 1, 64, V, generator=torch.Generator().manual_seed(seed))

    def logits_fn(tokens, cond):
        rows = torch.zeros(tokens.shape[0], dtype=torch.long) if cond is None else cond
        return table[rows, : tokens.shape[1]]

    return logits_fn


def counting(logits_fn, seen):
    """Wrap logits_fn, recording the number of [MASK]s of each row it is called on."""

    def wrapped(tokens, cond):
        seen.append((tokens == MASK).sum(1).tolist())
        return logits_fn(tokens, cond)

    return wrapped


def all_masked(B: int, N: int) -> torch.Tensor:
    return torch.full((B, N), MASK, dtype=torch.long)


@pytest.mark.parametrize("steps", [1, 2, 5, 8, 20])
def test_nothing_is_masked_after_the_last_step(steps):
    out = maskgit_decode(random_logits(), all_masked(3, 16), mask_id=MASK, steps=steps)
    assert out.shape == (3, 16) and not bool((out == MASK).any())
    assert bool(((out >= 0) & (out < V)).all())


def test_the_masks_left_after_each_step_follow_floor_gamma_n():
    seen = []
    maskgit_decode(counting(random_logits(), seen), all_masked(2, 16), mask_id=MASK, steps=4)
    # n_0 = 16; after step t: floor(16 cos(pi (t + 1) / 8)) = 14, 11, 6, then 0 at the end.
    assert seen == [[16, 16], [14, 14], [11, 11], [6, 6]]
    assert [math.floor(16 * math.cos(math.pi * t / 8)) for t in (1, 2, 3)] == [14, 11, 6]


def test_every_step_fixes_at_least_one_token_and_leaves_one_for_the_next():
    seen = []
    tokens = all_masked(1, 8)
    tokens[0, 3:] = 2  # 3 unknown positions, 8 steps
    out = maskgit_decode(counting(random_logits(), seen), tokens, mask_id=MASK, steps=8)
    # floor(3 cos(pi / 16)) = 2; then floor(3 cos(pi / 8)) = 2 is clamped to n_now - 1 = 1; at
    # least one stays masked until the last step.
    assert [s[0] for s in seen] == [3, 2, 1, 1, 1, 1, 1, 1]
    assert not bool((out == MASK).any())


def test_kept_masked_clamps_to_the_tokens_still_unknown():
    n_start, n_now = torch.tensor([10, 10, 10, 0]), torch.tensor([10, 3, 1, 0])
    # floor(10 cos(pi / 4)) = 7, clamped to [1, n_now - 1] and never above n_now.
    assert kept_masked(0, 2, n_start, n_now, "cosine").tolist() == [7, 2, 1, 0]
    assert kept_masked(1, 2, n_start, n_now, "cosine").tolist() == [0, 0, 0, 0]


def test_tokens_given_at_the_start_are_never_changed():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (4, 20), generator=g)
    holes = torch.rand(4, 20, generator=g) < 0.6
    tokens[holes] = MASK
    tokens[3] = MASK  # one row fully unknown
    tokens[2] = 1  # one row fully known
    out = maskgit_decode(random_logits(), tokens, mask_id=MASK, steps=6)
    assert torch.equal(out[~holes & (tokens != MASK)], tokens[~holes & (tokens != MASK)])
    assert torch.equal(out[2], tokens[2])
    assert not bool((out == MASK).any())


def test_a_token_fixed_at_a_step_stays_fixed():
    inputs = []

    def logits_fn(tokens, cond):
        inputs.append(tokens.clone())
        return torch.randn(*tokens.shape, V)

    maskgit_decode(logits_fn, all_masked(2, 12), mask_id=MASK, steps=5)
    for before, after in zip(inputs[:-1], inputs[1:], strict=True):
        known = before != MASK
        assert torch.equal(after[known], before[known])


def test_the_mask_logit_is_never_drawn():
    def logits_fn(tokens, cond):  # V + 1 logits, the [MASK] one by far the largest
        logits = torch.zeros(*tokens.shape, V + 1)
        logits[..., MASK] = 100.0
        return logits

    out = maskgit_decode(logits_fn, all_masked(2, 10), mask_id=MASK, steps=3, temperature=0.0)
    assert not bool((out == MASK).any())


def test_the_most_confident_positions_are_fixed_first_without_choice_noise():
    inputs = []

    def logits_fn(tokens, cond):  # position j's best token 0 has logit j: later positions surer
        inputs.append(tokens.clone())
        logits = torch.zeros(*tokens.shape, V)
        logits[..., 0] = torch.arange(tokens.shape[1], dtype=torch.float)
        return logits

    out = maskgit_decode(
        logits_fn, all_masked(1, 4), mask_id=MASK, steps=2, choice_temperature=0.0, temperature=0
    )
    # floor(4 cos(pi / 4)) = 2 stay masked after step 0: the two least confident, positions 0 and 1.
    assert inputs[1][0].tolist() == [MASK, MASK, 0, 0]
    assert out.tolist() == [[0, 0, 0, 0]]


def test_temperature_0_takes_the_most_likely_token():
    fn = random_logits(3)
    out = maskgit_decode(fn, all_masked(2, 16), mask_id=MASK, steps=4, temperature=0.0)
    assert torch.equal(out, fn(out, None).argmax(-1))  # the logits do not depend on the tokens


def test_top_k_1_is_greedy():
    fn = random_logits(4)
    out = maskgit_decode(fn, all_masked(2, 16), mask_id=MASK, steps=4, top_k=1)
    assert torch.equal(out, fn(out, None).argmax(-1))


def test_the_same_generator_seed_gives_the_same_tokens():
    def run(seed):
        return maskgit_decode(
            random_logits(),
            all_masked(4, 16),
            mask_id=MASK,
            steps=4,
            generator=torch.Generator().manual_seed(seed),
        )

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_with_one_generator_per_row_a_row_does_not_depend_on_the_batch():
    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    batch = maskgit_decode(
        random_logits(), all_masked(3, 16), mask_id=MASK, steps=5, generator=gens([7, 8, 9])
    )
    alone = maskgit_decode(random_logits(), all_masked(1, 16), mask_id=MASK, steps=5, generator=gens([8]))
    assert torch.equal(batch[1:2], alone)
    assert not torch.equal(batch[0], batch[1])
    with pytest.raises(ValueError, match="one per sample"):
        maskgit_decode(random_logits(), all_masked(3, 16), mask_id=MASK, steps=2, generator=gens([1, 2]))


def test_guidance_0_is_exactly_conditional_decoding_without_an_unconditional_pass():
    labels = []
    base = random_logits(5, classes=3)

    def logits_fn(tokens, cond):
        labels.append(cond.tolist())
        return base(tokens, cond)

    cond = torch.tensor([0, 2, 1])
    kwargs = dict(mask_id=MASK, steps=4, cond=cond)
    plain = maskgit_decode(logits_fn, all_masked(3, 16), generator=torch.Generator().manual_seed(0), **kwargs)
    calls = len(labels)
    guided = maskgit_decode(
        logits_fn,
        all_masked(3, 16),
        guidance=0.0,
        null_label=3,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
    assert torch.equal(plain, guided)
    assert all(row == [0, 2, 1] for row in labels[calls:])  # no null label passed


def test_guidance_extrapolates_the_logits_away_from_the_unconditional_ones():
    # l_c favours token 1 (1 vs 0.9 for token 2); l_u favours token 1 more: (1 + w) l_c - w l_u at
    # w = 1 is (0, 0, 1.8, ...), so guidance picks token 2.
    def logits_fn(tokens, cond):
        logits = torch.zeros(*tokens.shape, V)
        cond_rows = (cond == 0)[:, None]
        logits[..., 1] = torch.where(cond_rows, 1.0, 2.0)
        logits[..., 2] = torch.where(cond_rows, 0.9, 0.0)
        return logits

    common = dict(mask_id=MASK, steps=2, temperature=0.0, cond=torch.tensor([0, 0]), null_label=1)
    assert maskgit_decode(logits_fn, all_masked(2, 5), **common).unique().tolist() == [1]
    assert maskgit_decode(logits_fn, all_masked(2, 5), guidance=1.0, **common).unique().tolist() == [2]


def test_bad_settings_are_one_config_error():
    fn, tokens = random_logits(), all_masked(1, 4)
    with pytest.raises(ConfigError, match="at least one step"):
        maskgit_decode(fn, tokens, mask_id=MASK, steps=0)
    with pytest.raises(ConfigError, match="guidance=2.0 needs a class-conditional"):
        maskgit_decode(fn, tokens, mask_id=MASK, steps=2, guidance=2.0)
    with pytest.raises(ConfigError, match="top_k=0"):
        maskgit_decode(fn, tokens, mask_id=MASK, steps=2, top_k=0)
    with pytest.raises(ConfigError, match="choice_temperature=-1"):
        maskgit_decode(fn, tokens, mask_id=MASK, steps=2, choice_temperature=-1)
