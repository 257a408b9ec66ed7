"""WaveNet (lit_genai.nn.wavenet): the receptive field, causality, exact fast generation through the
rolling queues (Paine et al. 2016) and the ring buffers of the exportable step, global and local
conditioning, training, one-line errors."""

import pytest
import torch
import torch.nn.functional as F

from lit_genai.ar.sampling import generate
from lit_genai.errors import ConfigError
from lit_genai.nn.wavenet import WaveNet, WaveNetCache

LEVELS = 16


def tiny(**kwargs) -> WaveNet:
    torch.manual_seed(0)
    args = dict(levels=LEVELS, residual_channels=8, gate_channels=12, skip_channels=10)
    args.update(layers_per_stack=3, stacks=2, kernel_size=2)
    return WaveNet(**{**args, **kwargs}).eval()


def inputs(net: WaveNet, B: int, T: int, seed: int = 1):
    """Random ids (B, T), labels (B,) or None, local features (B, C, frames) or None."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, net.levels, (B, T), generator=g)
    cond = torch.randint(0, net.num_classes, (B,), generator=g) if net.num_classes else None
    frames = -(-T // net.hop_length)
    local = torch.randn(B, net.local_channels, frames, generator=g) if net.local_channels else None
    return idx, cond, local


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(kernel_size=3, layers_per_stack=10, stacks=3), 6139),  # the speech configuration
        (dict(kernel_size=2, layers_per_stack=10, stacks=5), 5116),  # 5 stacks of dilations 1 .. 512
        (dict(kernel_size=2, layers_per_stack=3, stacks=2), 15),  # 1 + 2 * (1 + 2 + 4)
        (dict(kernel_size=4, layers_per_stack=2, stacks=1), 10),  # 1 + 3 * (1 + 2)
    ],
)
def test_receptive_field_and_default_block_size(kwargs, field):
    net = WaveNet(residual_channels=2, gate_channels=2, skip_channels=2, **kwargs)
    assert net.receptive_field == field
    assert net.block_size == field
    assert net.dilations[: kwargs["layers_per_stack"]] == [2**i for i in range(kwargs["layers_per_stack"])]
    assert (
        WaveNet(
            residual_channels=2, gate_channels=2, skip_channels=2, block_size=field + 9, **kwargs
        ).block_size
        == field + 9
    )


@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(kernel_size=3, num_classes=3)])
def test_causal_with_exactly_the_receptive_field(kwargs):
    net = tiny(**kwargs).double()  # the far taps' effect passes through every layer: ~1e-7 here
    RF, T = net.receptive_field, 3 * net.receptive_field
    idx, cond, _ = inputs(net, 2, T)
    with torch.no_grad():
        base = net(idx, cond)
        for p in (0, RF // 2, RF, T - 1):
            changed = idx.clone()
            changed[:, p] = (idx[:, p] + 1) % LEVELS
            diff = (net(changed, cond) - base).abs().amax(dim=(0, 2))  # (T,) change of the logits at t
            assert torch.equal(diff[:p], torch.zeros(p, dtype=diff.dtype))  # nothing before p moves
            assert (diff[p : p + RF] > 1e-12).all()  # t = p .. p + RF - 1 see it: t itself and t - RF + 1
            assert torch.equal(
                diff[p + RF :], torch.zeros(max(T - p - RF, 0), dtype=diff.dtype)
            )  # t - RF is out of reach


CONFIGS = [
    dict(kernel_size=2),
    dict(kernel_size=3),
    dict(kernel_size=3, num_classes=3),
    dict(kernel_size=2, local_channels=4, hop_length=3),
    dict(kernel_size=3, layers_per_stack=2, stacks=3, num_classes=2, local_channels=3, hop_length=5),
]


@pytest.mark.parametrize("kwargs", CONFIGS)
@pytest.mark.parametrize("prompt", [1, 6, 40])  # shorter than and longer than the receptive field
@pytest.mark.parametrize("spare", [1, 7, 256])  # the inputs move to the front every `spare` steps
def test_cached_steps_equal_the_full_forward_at_every_position(kwargs, prompt, spare):
    net = tiny(**kwargs)
    T = prompt + 2 * net.receptive_field + 7  # the queues roll over several times
    idx, cond, local = inputs(net, 3, T)
    with torch.no_grad():
        full = net(idx, cond, local)  # (B, T, V)
        cache = net.init_cache(3, spare=spare)
        assert isinstance(cache, WaveNetCache) and cache.rolling
        out = [net(idx[:, :prompt], cond, local, cache=cache)]  # the prompt fills the queues
        for t in range(prompt, T):
            out.append(net(idx[:, t : t + 1], cond, None if t % 2 else local, cache=cache))
    assert cache.length == T
    torch.testing.assert_close(torch.cat(out, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_ring_steps_at_position_tensors_equal_the_full_forward(kwargs):
    net = tiny(**kwargs)
    T = 2 * net.receptive_field + 7  # every ring wraps around several times
    idx, cond, local = inputs(net, 3, T)
    rings = net.init_rings(3)
    assert [ring.shape for ring in rings] == [(3, 8, (net.kernel_size - 1) * d) for d in net.dilations]
    with torch.no_grad():
        full = net(idx, cond, local)  # (B, T, V)
        for _ in range(2):  # a second sequence restarts at position 0 with no reset of the rings
            steps = [net.step(idx[:, t : t + 1], torch.tensor([t]), rings, cond, local) for t in range(T)]
            torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs", CONFIGS[2:])
def test_chunks_through_the_cache_and_cropped_windows_equal_the_full_forward(kwargs):
    net = tiny(**kwargs)
    RF, T = net.receptive_field, 4 * net.receptive_field
    idx, cond, local = inputs(net, 2, T)
    with torch.no_grad():
        full = net(idx, cond, local)
        cache = net.init_cache(2, spare=3)
        sizes = [1, 9, 1, 1, 2, 1, 1, 1, 1, 5] * T  # chunks and single steps, mixed
        bounds = torch.tensor([0] + sizes).cumsum(0).clamp(max=T).unique().tolist()
        chunks = [
            net(idx[:, a:b], cond, local, cache=cache) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        chunks = torch.cat(chunks, dim=1)
        # a window starting at position o (as recomputing generation crops): exact from o + RF - 1 on
        o = RF + 2
        window = net(idx[:, o:], cond, local, offset=o)
    torch.testing.assert_close(chunks, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(window[:, RF - 1 :], full[:, o + RF - 1 :], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs, prompt_length",
    [(dict(), 5), (dict(num_classes=3), 40), (dict(num_classes=3, local_channels=3, hop_length=4), 21)],
)
def test_generate_with_and_without_cache_draws_the_same_samples(kwargs, prompt_length):
    net = tiny(kernel_size=3, **kwargs)
    n = 280  # past the context (29) and the queues' 256 spare columns; the recomputation crops
    _, cond, local = inputs(net, 2, prompt_length + n)
    prompt = torch.randint(0, LEVELS, (2, prompt_length), generator=torch.Generator().manual_seed(3))
    extra = dict(cond=cond, local=local)
    a = generate(net, prompt, n, use_cache=True, generator=torch.Generator().manual_seed(0), **extra)
    b = generate(net, prompt, n, use_cache=False, generator=torch.Generator().manual_seed(0), **extra)
    assert a.shape == (2, prompt_length + n) and torch.equal(a, b)
    assert len(set(a[0].tolist())) > 4  # real draws, not one repeated id


def test_generate_steps_one_sample_at_a_time_past_the_context():
    net = tiny()
    sizes = []
    net.register_forward_hook(lambda module, args, output: sizes.append(output.shape[1]))
    generate(net, torch.zeros(1, 3, dtype=torch.long), 3 * net.block_size, generator=torch.Generator())
    assert sizes[0] == 3 and set(sizes[1:]) == {1}


def test_class_conditioning_changes_the_logits():
    net = tiny(num_classes=3)
    idx, _, _ = inputs(net, 1, 30)
    with torch.no_grad():
        logits = [net(idx, torch.tensor([c])) for c in range(4)]  # 3: the null label
    for c in range(1, 4):
        assert (logits[c] - logits[0]).abs().amax(-1).min() > 1e-6  # at every position


def test_local_frame_conditions_its_hop_of_positions_and_later_ones_only():
    net = tiny(local_channels=4, hop_length=5).double()
    T = 60
    idx, _, local = inputs(net, 2, T)
    local = local.double()
    # frame 4 enters the gates of every layer at positions 20 .. 24; the first layer's gates at 24
    # reach the outputs up to 24 + (k - 1) * (sum of the later layers' dilations), RF - 2 here (k = 2)
    first, last = 20, 24 + net.receptive_field - 2
    changed = local.clone()
    changed[:, :, 4] += 1.0
    with torch.no_grad():
        diff = (net(idx, local=changed) - net(idx, local=local)).abs().amax(dim=(0, 2))  # (T,)
    assert torch.equal(diff[:first], torch.zeros(first, dtype=diff.dtype))
    assert (diff[first : last + 1] > 1e-12).all()
    assert torch.equal(diff[last + 1 :], torch.zeros(T - last - 1, dtype=diff.dtype))


def test_adam_steps_lower_the_loss_on_a_fixed_batch():
    net = tiny(num_classes=2, local_channels=3, hop_length=4).train()
    tokens, cond, _ = inputs(net, 4, 65)
    local = torch.randn(4, 3, 17, generator=torch.Generator().manual_seed(5))  # ceil(65 / 4) frames
    x, y = tokens[:, :-1], tokens[:, 1:]  # target_offset = 1
    assert WaveNet.target_offset == 1
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)

    def loss() -> torch.Tensor:
        return F.cross_entropy(net(x, cond, local).flatten(0, 1), y.flatten())

    first = loss().item()
    assert abs(first - torch.log(torch.tensor(float(LEVELS))).item()) < 0.5  # near uniform at the start
    for _ in range(60):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    assert loss().item() < 0.5 * first
    assert all(p.grad is not None for p in net.parameters())  # no unused parameters (DDP)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(levels=1), "levels"),
        (dict(residual_channels=0), "residual_channels"),
        (dict(gate_channels=7), "gate_channels"),
        (dict(skip_channels=0), "skip_channels"),
        (dict(kernel_size=1), "kernel_size"),
        (dict(layers_per_stack=0), "layers_per_stack"),
        (dict(stacks=0), "stacks"),
        (dict(num_classes=-1), "num_classes"),
        (dict(local_channels=-2), "local_channels"),
        (dict(hop_length=0), "hop_length"),
        (dict(block_size=100), "block_size"),  # shorter than the receptive field 3070
    ],
)
def test_config_errors_are_one_line(kwargs, key):
    with pytest.raises(ConfigError) as err:
        WaveNet(**kwargs)
    message = str(err.value)
    assert "\n" not in message and f"model.net.init_args.{key}=" in message


def test_wrong_inputs_are_reported():
    net = tiny(num_classes=2, local_channels=3, hop_length=4)
    idx = torch.zeros(2, 9, dtype=torch.long)
    local = torch.zeros(2, 3, 3)
    with pytest.raises(ValueError, match="cond must be"):
        net(idx, None, local)
    with pytest.raises(ValueError, match=r"local must be \(2, 3, >= 3\)"):
        net(idx, torch.zeros(2, dtype=torch.long), local[:, :, :2])
    with pytest.raises(ValueError, match="cond"):
        tiny()(idx, torch.zeros(2, dtype=torch.long))
    cache = net.init_cache(2)
    net(idx[:, :8], torch.zeros(2, dtype=torch.long), local[:, :, :2], cache=cache)  # 2 frames: 8 samples
    with pytest.raises(ValueError, match="cached local features cover 2 frames"):
        net(idx[:, :1], torch.zeros(2, dtype=torch.long), cache=cache)
    rings, pos = net.init_rings(2), torch.tensor([0])
    with pytest.raises(ValueError, match=r"idx must be \(B, 1\) sample ids and input_pos \(1,\)"):
        net.step(idx[:, :2], pos, rings, torch.zeros(2, dtype=torch.long), local)
    with pytest.raises(ValueError, match=r"local must be \(2, 3, >= 1\)"):
        net.step(idx[:, :1], pos, rings, torch.zeros(2, dtype=torch.long), None)
