"""lit_genai.export.decoding: the one-token decode steps of GPT (static key/value cache) and WaveNet
(ring buffers) draw what ``ar.sampling.generate`` draws with today's caches, and after
``torch.export`` + save + load give the same logits and the same tokens."""

import pytest
import torch

from lit_genai.ar.sampling import generate
from lit_genai.errors import ConfigError
from lit_genai.export.decoding import (
    GPTDecodeStep,
    WaveNetDecodeStep,
    decode_step_signature,
    export_decode_step,
    export_gpt_decode_step,
    export_wavenet_step,
    generate_with_step,
)
from lit_genai.nn.pixelcnn import GatedPixelCNN
from lit_genai.nn.transformer import GPT
from lit_genai.nn.wavenet import WaveNet

GPT_VARIANTS = [dict(), dict(num_classes=3), dict(rope=True), dict(num_classes=3, rope=True)]
DRAWS = [dict(temperature=0.0), dict(temperature=1.0), dict(temperature=0.8, top_k=5, top_p=0.9)]


def tiny_gpt(**kwargs) -> GPT:
    torch.manual_seed(0)
    return GPT(
        **{"vocab_size": 17, "block_size": 12, "n_layer": 2, "n_head": 2, "n_embd": 16, **kwargs}
    ).eval()


def tiny_wavenet(**kwargs) -> WaveNet:
    torch.manual_seed(0)
    args = dict(
        levels=16, residual_channels=8, gate_channels=12, skip_channels=10, layers_per_stack=3, stacks=2
    )
    return WaveNet(**{**args, **kwargs}).eval()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def conditions(net, B: int, T: int) -> dict:
    """The labels and local features ``net`` takes (B rows, T samples), by keyword."""
    g = gen(5)
    extra = {}
    if net.num_classes:
        extra["cond"] = torch.randint(0, net.num_classes + 1, (B,), generator=g)  # the null label too
    if getattr(net, "local_channels", 0):
        extra["local"] = torch.randn(B, net.local_channels, -(-T // net.hop_length), generator=g)
    return extra


@pytest.mark.parametrize("kwargs", GPT_VARIANTS)
@pytest.mark.parametrize("draw", DRAWS)
def test_gpt_step_draws_the_tokens_of_todays_cache(kwargs, draw):
    net = tiny_gpt(**kwargs)
    prompt = torch.randint(0, 17, (3, 4), generator=gen(1))
    extra = conditions(net, 3, 12)
    expected = generate(net, prompt, 9, generator=gen(), **draw, **extra)  # fills the 12 positions
    for per_row in (False, True):
        got = generate_with_step(
            GPTDecodeStep(net, 3),
            prompt,
            9,
            context=12,
            per_row_positions=per_row,
            generator=gen(),
            **draw,
            **extra,
        )
        assert torch.equal(got, expected)
    rows = generate(
        net, prompt, 9, generator=[gen(i) for i in range(3)], **draw, **extra
    )  # a generator per row
    step = GPTDecodeStep(net, 3)
    assert torch.equal(
        generate_with_step(step, prompt, 9, generator=[gen(i) for i in range(3)], **draw, **extra), rows
    )


@pytest.mark.parametrize(
    "kwargs, per_row",
    [
        (dict(num_classes=3, rope=True), False),
        pytest.param(dict(), True, marks=pytest.mark.slow),  # per-row positions are also tested eagerly
    ],
)
def test_exported_gpt_step_after_save_and_load(tmp_path, kwargs, per_row):
    net = tiny_gpt(**kwargs)
    program = export_gpt_decode_step(net, batch_size=2, per_row_positions=per_row)
    torch.export.save(program, tmp_path / "step.pt2")
    step = torch.export.load(tmp_path / "step.pt2").module()
    x = torch.randint(0, 17, (2, 12), generator=gen(2))
    extra = conditions(net, 2, 12)
    with torch.no_grad():
        full = net(x, extra.get("cond"))  # (2, 12, V)
        for _ in range(2):  # the second sequence restarts at position 0: no reset needed
            logits = []
            for t in range(12):
                pos = torch.full((2, 1), t) if per_row else torch.tensor([t])
                logits.append(step(x[:, t : t + 1], pos, **extra))
            torch.testing.assert_close(torch.stack(logits, dim=1), full, rtol=1e-5, atol=1e-5)
    for draw in DRAWS[:2]:  # greedy and sampled
        options = dict(context=12, per_row_positions=per_row, generator=gen(3), **draw, **extra)
        got = generate_with_step(step, x[:, :3], 9, **options)
        assert torch.equal(got, generate(net, x[:, :3], 9, generator=gen(3), **draw, **extra))


@pytest.mark.slow  # ~10 s: export and decomposition
def test_exported_gpt_step_decomposes_to_a_functional_graph():
    """Runtimes (AOTInductor, ExecuTorch) take the decomposed program: the cache writes become
    buffer mutations, and the logits stay the same."""
    net = tiny_gpt(num_classes=3)
    program = export_gpt_decode_step(net, batch_size=2).run_decompositions()
    mutated = [
        spec.target for spec in program.graph_signature.output_specs if spec.kind.name == "BUFFER_MUTATION"
    ]
    assert sorted(mutated) == sorted(f"{kind}_{i}" for kind in ("keys", "values") for i in range(2))
    step, x, cond = program.module(), torch.randint(0, 17, (2, 7), generator=gen(2)), torch.tensor([0, 3])
    with torch.no_grad():
        logits = torch.stack([step(x[:, t : t + 1], torch.tensor([t]), cond=cond) for t in range(7)], dim=1)
        torch.testing.assert_close(logits, net(x, cond), rtol=1e-5, atol=1e-5)


WAVENET_VARIANTS = [
    dict(kernel_size=2),
    dict(kernel_size=3, num_classes=3),
    dict(kernel_size=3, num_classes=2, local_channels=3, hop_length=5),
]


@pytest.mark.parametrize("kwargs", WAVENET_VARIANTS)
def test_wavenet_ring_step_draws_the_samples_of_todays_queues(kwargs):
    net = tiny_wavenet(**kwargs)
    n = 270  # past the queues' 256 spare columns and many times round every ring
    prompt = torch.randint(0, 16, (2, 6), generator=gen(1))
    extra = conditions(net, 2, 6 + n)
    expected = generate(net, prompt, n, generator=gen(), **extra)  # today's rolling queues
    got = generate_with_step(WaveNetDecodeStep(net, 2), prompt, n, generator=gen(), **extra)
    assert torch.equal(got, expected) and len(set(got[0].tolist())) > 4


@pytest.mark.parametrize(
    "kwargs", [WAVENET_VARIANTS[2], pytest.param(WAVENET_VARIANTS[0], marks=pytest.mark.slow)]
)
def test_exported_wavenet_step_after_save_and_load(tmp_path, kwargs):
    net = tiny_wavenet(**kwargs)
    torch.export.save(export_wavenet_step(net, batch_size=2), tmp_path / "step.pt2")
    step = torch.export.load(tmp_path / "step.pt2").module()
    n = 36  # past the receptive field (29 samples)
    prompt = torch.randint(0, 16, (2, 4), generator=gen(1))
    extra = conditions(net, 2, 4 + n)  # 8 frames: not the example's 2 (the frames are dynamic)
    with torch.no_grad():
        full = net(prompt, extra.get("cond"), extra.get("local"))
        logits = torch.stack(
            [step(prompt[:, t : t + 1], torch.tensor([t]), **extra) for t in range(4)], dim=1
        )
    torch.testing.assert_close(logits, full, rtol=1e-5, atol=1e-5)
    for draw in DRAWS[:2]:
        got = generate_with_step(step, prompt, n, generator=gen(2), **draw, **extra)
        assert torch.equal(got, generate(net, prompt, n, generator=gen(2), **draw, **extra))


def test_signature_names_the_inputs_in_call_order():
    gpt = decode_step_signature(tiny_gpt(num_classes=3), batch_size=2)
    assert [(i["name"], i["shape"], i.get("range")) for i in gpt["inputs"]] == [
        ("idx", [2, 1], [0, 16]),
        ("input_pos", [1], [0, 11]),  # block_size 12
        ("cond", [2], [0, 3]),  # 3: the null label
    ]
    assert gpt["outputs"][0]["shape"] == [2, 17]
    wavenet = decode_step_signature(tiny_wavenet(local_channels=3, hop_length=5), batch_size=2)
    assert [(i["name"], i["shape"]) for i in wavenet["inputs"]][1:] == [
        ("input_pos", [1]),
        ("local", [2, 3, "frames"]),
    ]


def test_errors_are_one_line():
    cases = [
        (
            lambda: export_decode_step(GatedPixelCNN(image_shape=(1, 4, 4), levels=4, hidden=4, n_layers=1)),
            "GatedPixelCNN has no",
        ),
        (
            lambda: decode_step_signature(GatedPixelCNN(image_shape=(1, 4, 4), levels=4)),
            "GatedPixelCNN has no",
        ),
        (lambda: GPTDecodeStep(tiny_gpt(causal=False), 1), "causal=False"),
        (lambda: export_gpt_decode_step(tiny_gpt(), batch_size=0), "batch_size=0"),
        (
            lambda: generate_with_step(
                GPTDecodeStep(tiny_gpt(), 1), torch.zeros(1, 5, dtype=torch.long), 9, context=12
            ),
            "need 13 positions, more than the decode step's 12",
        ),
    ]
    for call, match in cases:
        with pytest.raises(ConfigError, match=match) as err:
            call()
        assert "\n" not in str(err.value)
