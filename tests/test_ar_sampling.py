"""lit_genai.ar.sampling: logit filters, draws, and the generation loop with and without the cache."""

import pytest
import torch

from lit_genai.ar.sampling import filter_logits, generate, sample_next
from lit_genai.errors import ConfigError
from lit_genai.nn.transformer import GPT


def tiny(**kwargs) -> GPT:
    torch.manual_seed(0)
    return GPT(**{"vocab_size": 11, "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 16, **kwargs})


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_temperature_scales_logits():
    logits = torch.randn(4, 9)
    torch.testing.assert_close(filter_logits(logits, 0.5).softmax(-1), (logits / 0.5).softmax(-1))


def test_top_k_keeps_the_k_largest():
    logits = torch.randn(6, 20)
    out = filter_logits(logits, top_k=5)
    kept = torch.isfinite(out)
    assert (kept.sum(-1) == 5).all()
    assert torch.equal(kept, logits >= logits.topk(5, dim=-1).values[:, -1:])
    assert torch.isfinite(filter_logits(logits, top_k=100)).all()  # k beyond V keeps everything


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9, 0.999])
def test_top_p_keeps_the_smallest_set_of_mass_p(p):
    logits = torch.randn(8, 30) * 2
    kept = torch.isfinite(filter_logits(logits, top_p=p))
    probs = logits.softmax(-1)
    for row in range(8):
        order = probs[row].argsort(descending=True)
        cum = probs[row][order].cumsum(0)
        n = int((cum < p).sum()) + 1  # the smallest prefix whose mass reaches p
        expected = torch.zeros(30, dtype=torch.bool)
        expected[order[:n]] = True
        assert torch.equal(kept[row], expected)
    assert kept.sum(-1).min() >= 1


def test_draws_never_emit_filtered_tokens_and_follow_the_probabilities():
    torch.manual_seed(1)
    logits = torch.randn(1, 12).repeat(20000, 1)
    for kwargs in ({"top_k": 3}, {"top_p": 0.6}, {"top_k": 6, "top_p": 0.8, "temperature": 1.5}):
        filtered = filter_logits(logits, **kwargs)
        tokens = sample_next(filtered, gen(0))
        allowed = torch.isfinite(filtered[0])
        assert allowed[tokens].all()
        freq = torch.bincount(tokens, minlength=12).float() / len(tokens)
        torch.testing.assert_close(freq, filtered[0].softmax(-1), rtol=0, atol=0.015)


def test_temperature_zero_is_greedy():
    net = tiny().eval()
    prompt = torch.randint(0, 11, (3, 2))
    out = generate(net, prompt, 10, temperature=0.0)
    seq = prompt
    for _ in range(10):  # the reference: argmax over a full recomputation
        seq = torch.cat([seq, net(seq[:, -8:])[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)
    # a tiny temperature draws the same tokens
    assert torch.equal(generate(net, prompt, 10, temperature=1e-4, generator=gen(3)), seq)


@pytest.mark.parametrize(
    "options", [{}, {"top_k": 4}, {"top_p": 0.7, "temperature": 1.3}, {"cond": torch.tensor([0, 1, 2, 3])}]
)
def test_cache_equals_recomputation_past_block_size(options):
    net = tiny(num_classes=3 if "cond" in options else 0)
    prompt = torch.randint(0, 11, (4, 3))
    with_cache = generate(net, prompt, 20, generator=gen(7), **options)  # 23 tokens > block_size 8
    without = generate(net, prompt, 20, generator=gen(7), use_cache=False, **options)
    assert with_cache.shape == (4, 23)
    assert torch.equal(with_cache[:, :3], prompt)
    assert torch.equal(with_cache, without)
    assert net.training  # the net's mode is restored


def test_prompt_longer_than_block_size_is_kept_and_cropped_for_context():
    net = tiny()
    prompt = torch.randint(0, 11, (2, 13))
    out = generate(net, prompt, 4, generator=gen(0))
    assert out.shape == (2, 17) and torch.equal(out[:, :13], prompt)
    # only the last block_size tokens are context: the same draws as from the cropped prompt
    assert torch.equal(out[:, 13:], generate(net, prompt[:, -8:], 4, generator=gen(0))[:, 8:])


def test_one_generator_per_row():
    net = tiny()
    prompt = torch.randint(0, 11, (3, 2))
    batch = generate(net, prompt, 12, generator=[gen(10), gen(11), gen(12)])
    for i in range(3):  # row i alone with its generator gives the same tokens
        alone = generate(net, prompt[i : i + 1], 12, generator=[gen(10 + i)])
        assert torch.equal(batch[i : i + 1], alone)
    other = generate(net, prompt, 12, generator=[gen(99), gen(11), gen(12)])
    assert torch.equal(other[1:], batch[1:]) and not torch.equal(other[0], batch[0])
    with pytest.raises(ValueError, match="one per sample"):
        generate(net, prompt, 2, generator=[gen(0)])


def test_same_seed_same_tokens_and_progress_bar_changes_nothing():
    net = tiny()
    prompt = torch.zeros(2, 1, dtype=torch.long)
    a = generate(net, prompt, 6, generator=gen(5))
    assert torch.equal(a, generate(net, prompt, 6, generator=gen(5), progress=True))
    assert not torch.equal(a, generate(net, prompt, 6, generator=gen(6)))
    assert torch.equal(generate(net, prompt, 0), prompt)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"temperature": -1.0}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_p": 1.5}, "top_p")],
)
def test_bad_options_are_one_line(kwargs, match):
    with pytest.raises(ConfigError, match=match) as err:
        generate(tiny(), torch.zeros(1, 1, dtype=torch.long), 3, **kwargs)
    assert "\n" not in str(err.value)


# ------------------------------------------------- generate_in_place: target_offset 0 (GatedPixelCNN)


def pixelcnn(shape, levels=4, **kwargs):
    from lit_genai.nn.pixelcnn import GatedPixelCNN

    torch.manual_seed(0)
    return GatedPixelCNN(shape, levels, **{"hidden": 12, "n_layers": 3, "output_hidden": 24, **kwargs})


class CountingForward:
    """Counts a net's forward passes (the fast sampler makes none)."""

    def __init__(self, net):
        self.calls, self.net = 0, net
        self.hook = net.register_forward_hook(lambda *args: setattr(self, "calls", self.calls + 1))


@pytest.mark.parametrize(
    "shape,net_kwargs,options",
    [
        ((1, 6, 6), {}, {}),
        ((1, 6, 6), {"num_classes": 3}, {"cond": torch.tensor([0, 1, 2, 3]), "prompt_rows": 2}),
        ((3, 4, 5), {}, {"prompt_rows": 1, "top_k": 3}),
        ((3, 4, 5), {"num_classes": 2}, {"cond": torch.tensor([1, 0, 2, 1]), "temperature": 1.7}),
        ((3, 4, 5), {}, {"prompt": 7, "top_p": 0.8}),  # a prompt ending inside a pixel
        ((1, 5, 4), {"input": "embedding"}, {"prompt_rows": 2, "per_row": True}),
        ((3, 4, 4), {}, {"temperature": 0.0, "prompt_rows": 1}),
    ],
)
def test_in_place_fast_sampler_draws_the_same_tokens_as_full_passes(shape, net_kwargs, options):
    from lit_genai.ar.sampling import generate_in_place

    levels = 6 if net_kwargs.get("input") == "embedding" else 4
    net = pixelcnn(shape, levels, **net_kwargs)
    C, H, W = shape
    options = dict(options)
    T0 = options.pop("prompt_rows", 0) * W * C + options.pop("prompt", 0)
    prompt = torch.randint(0, levels, (4, T0)) if T0 else None
    per_row = options.pop("per_row", False)

    def run(fast):
        generator = [gen(20 + i) for i in range(4)] if per_row else gen(20)
        counter = CountingForward(net)
        out = generate_in_place(
            net, 4, net.block_size, prompt=prompt, generator=generator, fast=fast, **options
        )
        counter.hook.remove()
        return out, counter.calls

    (fast, fast_calls), (slow, slow_calls) = run(True), run(False)
    assert fast.shape == (4, C * H * W) and fast.dtype == torch.long
    assert torch.equal(fast, slow)
    assert (fast_calls, slow_calls) == (0, C * H * W - T0)  # the fast path made no full pass
    if prompt is not None:
        assert torch.equal(fast[:, :T0], prompt)
    assert len(fast.unique()) > 1 and net.training  # not a constant image; the net's mode restored


def test_in_place_without_a_fast_sampler_or_for_another_length_uses_full_passes():
    from lit_genai.ar.sampling import generate_in_place

    net = pixelcnn((1, 4, 4))
    counter = CountingForward(net)
    reference = generate_in_place(net, 3, 16, generator=gen(4))
    assert counter.calls == 0
    net.sample_in_place = None  # a net without the method: the generic loop, the same tokens
    assert torch.equal(generate_in_place(net, 3, 16, generator=gen(4)), reference)
    assert counter.calls == 16
    del net.sample_in_place
    generate_in_place(net, 3, 8, generator=gen(4))  # two rows only: not the net's block, full passes
    assert counter.calls == 16 + 8
