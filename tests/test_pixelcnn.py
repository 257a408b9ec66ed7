"""GatedPixelCNN (lit_genai.nn.pixelcnn): causality of both stacks, no blind spot, the R -> G -> B
channel order, conditioning, the embedding input, training, one-line errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from lit_genai.errors import ConfigError
from lit_genai.nn.pixelcnn import GatedPixelCNN, channel_groups, channel_mask


def tiny(shape=(1, 8, 8), levels=4, **kwargs) -> GatedPixelCNN:
    torch.manual_seed(0)
    args = {"hidden": 12, "n_layers": 4, "output_hidden": 24, **kwargs}
    return GatedPixelCNN(image_shape=shape, levels=levels, **args)


def jacobian(net: GatedPixelCNN, cond=None, inputs: int = 8) -> torch.Tensor:
    """(N, inputs, N): d (a random projection of the logits at position q) / d (intensity at position
    p) at ``inputs`` random images; a ReLU may be off at one image, so dependence is "non-zero at one"."""
    C, H, W = net.image_shape
    torch.manual_seed(1)
    x = torch.rand(inputs, net.block_size) * 2 - 1  # (inputs, N) intensities, token order
    proj = torch.randn(net.levels)
    cond = None if cond is None else cond.expand(inputs)

    def out(z):
        images = z.view(inputs, H, W, C).permute(0, 3, 1, 2)  # (inputs, C, H, W)
        return (net.logits_of_input(images, cond) @ proj).sum(0)  # (N,): the images are independent

    return torch.autograd.functional.jacobian(out, x, vectorize=True)  # (N out, inputs, N in)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 8, 8), (3, 5, 7)])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_logits_depend_on_every_earlier_position_and_no_later_one(shape, num_classes):
    # 7x7 mask-A layer + 4 gated 3x3 layers: the field reaches 7 rows up, 7 columns left and right;
    # the blind spot of a single masked stack (pixels above-right) would leave zeros below the diagonal
    net = tiny(shape, num_classes=num_classes)
    cond = torch.tensor([1]) if num_classes else None
    J = jacobian(net, cond)
    assert (J == 0).any(1).any()  # a ReLU is off somewhere: one image alone would not do
    J = J.abs().amax(1)  # (N, N): dependence of q on p at one of the images at least
    N = net.block_size
    earlier = torch.ones(N, N).tril(-1).bool()  # earlier[q, p]: p < q
    assert (J[~earlier] == 0).all()  # causal: exactly zero, the masks leave no path
    assert (J[earlier] != 0).all()  # every earlier position reaches q, the last and the middle ones too
    assert (J[-1, :-1] != 0).all() and (J[N // 2, : N // 2] != 0).all()


def test_a_shallow_net_does_not_reach_far_pixels():
    # the receptive field is what the stacks give: 7x7 first layer, 1 more 3x3 layer -> 4 rows up
    net = tiny((1, 8, 8), n_layers=1)
    J = jacobian(net).abs().amax(1)
    assert J[-1, 0] == 0 and J[-1, 8 * 3 + 3] != 0  # (7, 7) does not see (0, 0), but sees (3, 3)


def test_rgb_channel_order_within_a_pixel():
    net = tiny((3, 4, 4))
    J = jacobian(net).abs().amax(1)
    p = (2 * 4 + 1) * 3  # pixel (2, 1): positions p (R), p + 1 (G), p + 2 (B)
    block = J[p : p + 3, p : p + 3]  # d logits(channel row) / d input(channel column)
    assert (block.triu() == 0).all()  # R sees neither G nor B of its pixel, G not B, none itself
    assert block[1, 0] != 0 and block[2, 0] != 0 and block[2, 1] != 0  # G sees R, B sees R and G
    assert (J[p : p + 3, :p] != 0).all()  # every channel sees every channel of the earlier pixels


def test_channel_masks():
    groups = channel_groups(12, 3, parts=2)  # tanh half and sigmoid half, 3 groups of 2 each
    assert groups.tolist() == [0, 0, 1, 1, 2, 2] * 2
    a = channel_mask(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), "A")
    b = channel_mask(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), "B")
    assert torch.equal(a, torch.ones(3, 3).tril(-1)) and torch.equal(b, torch.ones(3, 3).tril())


@pytest.mark.parametrize(
    "shape,levels,kwargs",
    [((3, 4, 4), 4, {"num_classes": 2}), ((1, 5, 4), 7, {"input": "embedding"}), ((1, 4, 4), 2, {})],
)
def test_changing_a_token_changes_only_later_logits(shape, levels, kwargs):
    net = tiny(shape, levels, **kwargs).eval()
    N, bases = net.block_size, 3
    base = torch.randint(0, levels, (bases, 1, N))
    batch = base.repeat(1, N + 1, 1)  # (bases, N + 1, N); row p: token p changed; row N: unchanged
    batch[:, torch.arange(N), torch.arange(N)] = (base[:, 0] + 1) % levels
    cond = torch.ones(bases * (N + 1), dtype=torch.long) if net.num_classes else None
    with torch.no_grad():
        logits = net(batch.flatten(0, 1), cond).view(bases, N + 1, N, levels)
    change = (logits[:, :N] - logits[:, N:]).abs().amax(dim=-1)  # (bases, N, N): [., p, q] logits q move
    later = torch.ones(N, N).triu(1).bool()  # later[p, q]: q > p
    assert (change[:, ~later] <= 1e-6).all()
    # the next position sees the changed token (a ReLU may be off for one of the bases)
    assert (change.amax(0).diagonal(1) > 1e-6).all()


def test_shapes_and_attributes():
    net = tiny((3, 6, 5), levels=256)
    logits = net(torch.randint(0, 256, (2, 90)))
    assert logits.shape == (2, 90, 256) and logits.dtype == torch.float32
    assert (net.vocab_size, net.block_size, net.num_classes, net.target_offset) == (256, 90, 0, 0)
    assert net.image_shape == (3, 6, 5) and net.in_channels == 3 and net.image_size is None
    assert GatedPixelCNN.target_offset == 0
    assert not any("mask" in key for key in net.state_dict())  # masks follow from the configuration
    # defaults: 7x7 first layer and 7 gated 3x3 layers
    default = GatedPixelCNN(image_shape=[1, 28, 28], levels=2)
    assert len(default.layers) == 8 and default.layers[0].v_conv.kernel_size == (3, 7)
    assert default.layers[1].v_conv.kernel_size == (2, 3) and default.layers[1].h_conv.kernel_size == (1, 2)
    assert default.image_size == 28 and default(torch.zeros(1, 784, dtype=torch.long)).shape == (1, 784, 2)


def test_the_intensity_input_is_the_papers_pixel_scaling():
    net = tiny((1, 3, 3), levels=5)
    seen = {}
    net.logits_of_input = lambda x, cond=None: seen.setdefault("x", x)  # type: ignore[method-assign]
    net(torch.tensor([[0, 1, 2, 3, 4, 0, 0, 0, 4]]))
    expected = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, -1, -1, -1, 1]).view(1, 1, 3, 3)
    torch.testing.assert_close(seen["x"], expected)


def test_class_conditioning():
    net = tiny((1, 4, 4), num_classes=3).eval()
    idx = torch.randint(0, 4, (4, 16))
    with torch.no_grad():
        logits = net(idx, torch.tensor([0, 1, 2, 3]))  # label 3: the null label
        same = net(idx, torch.tensor([0, 0, 0, 0]))
    assert torch.allclose(logits[0], same[0])
    for k in (1, 2, 3):  # every label moves every position's logits, the first one's too
        assert ((logits[k] - same[k]).abs().amax(dim=-1) > 1e-5).all()
    with pytest.raises(ValueError, match="cond must be"):
        net(idx)
    with pytest.raises(ValueError, match="num_classes=0"):
        tiny((1, 4, 4))(idx, torch.zeros(4, dtype=torch.long))


def test_embedding_input():
    net = tiny((1, 4, 4), levels=9, input="embedding")
    assert net.embedding.num_embeddings == 9 and net.embedding.embedding_dim == 12
    idx = torch.randint(0, 9, (2, 16))
    other = idx.clone()
    other[:, 5] = (idx[:, 5] + 4) % 9  # the ids carry no order: a different id, different logits
    with torch.no_grad():
        assert (net(idx)[:, 6] - net(other)[:, 6]).abs().amax() > 1e-5


@pytest.mark.parametrize("shape,kwargs", [((1, 6, 6), {"num_classes": 2}), ((3, 4, 4), {})])
def test_a_few_adam_steps_lower_the_loss(shape, kwargs):
    net = tiny(shape, levels=4, **kwargs)
    cond = torch.arange(8) % 2 if net.num_classes else None
    # constant images: every token after the first is its predecessor; with classes the first one too
    value = 2 * cond + 1 if cond is not None else torch.randint(0, 4, (8,))
    idx = value[:, None].expand(8, net.block_size).contiguous()  # (8, N)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(net(idx, cond).flatten(0, 1), idx.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(4), abs=0.15)  # near-uniform logits at init
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"image_shape": (3, 4, 4), "input": "embedding"}, "input='embedding' needs one channel"),
        ({"image_shape": (3, 4, 4), "hidden": 16}, "hidden=16 must be a multiple of C=3"),
        ({"kernel_size": 4}, "kernel_size=4 must be odd"),
        ({"first_kernel_size": 1}, "first_kernel_size=1 must be odd, >= 3"),
        ({"levels": 1}, "levels=1 must be at least 2"),
        ({"image_shape": (4, 4)}, "must be \\[C, H, W\\]"),
    ],
)
def test_config_errors(kwargs, match):
    args = {"image_shape": (1, 4, 4), "levels": 4, "hidden": 12, "output_hidden": 12, **kwargs}
    with pytest.raises(ConfigError, match=match):
        GatedPixelCNN(**args)


def test_wrong_token_shape_is_one_line():
    with pytest.raises(ValueError, match=r"idx must be \(B, 16\) .* a multiple of 4 tokens"):
        tiny((1, 4, 4))(torch.zeros(2, 15, dtype=torch.long))
    with pytest.raises(ValueError, match=r"idx must be \(B, 16\)"):
        tiny((1, 4, 4))(torch.zeros(2, 20, dtype=torch.long))


@pytest.mark.parametrize(
    "shape,kwargs", [((3, 5, 4), {"num_classes": 2}), ((1, 6, 3), {"input": "embedding"})]
)
def test_the_first_rows_alone_give_the_same_logits(shape, kwargs):
    net = tiny(shape, levels=5, **kwargs).eval()
    C, H, W = shape
    assert net.tokens_per_row == W * C
    idx = torch.randint(0, 5, (2, net.block_size))
    cond = torch.tensor([0, 2]) if net.num_classes else None
    with torch.no_grad():
        full = net(idx, cond)  # (2, N, 5)
        for rows in range(1, H + 1):
            n = rows * W * C
            torch.testing.assert_close(net(idx[:, :n], cond), full[:, :n], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "shape,levels,kwargs",
    [
        ((1, 7, 6), 2, {}),
        ((3, 5, 4), 5, {"num_classes": 3}),
        ((1, 6, 5), 9, {"input": "embedding", "num_classes": 2}),
        ((3, 4, 6), 4, {"kernel_size": 1, "n_layers": 2}),
        ((3, 6, 4), 4, {"kernel_size": 5, "first_kernel_size": 3}),
    ],
)
def test_incremental_sampling_gives_the_full_passes_logits(shape, levels, kwargs):
    net = tiny(shape, levels, **kwargs).eval()
    N, B = net.block_size, 3
    torch.manual_seed(2)
    target = torch.randint(0, levels, (B, N))
    cond = torch.tensor([0, 1, net.num_classes]) if net.num_classes else None
    with torch.no_grad():
        full = net(target, cond)  # (B, N, L)
    for start in (0, 5, N // 2 + 1, N):  # prompts ending inside a pixel, inside a row, and everything
        seq = target.clone()
        seq[:, start:] = torch.randint(0, levels, (B, N - start))  # junk the sampler must not see
        seen: dict[int, torch.Tensor] = {}

        def draw(logits, p, seen=seen):  # teacher forcing: record the logits, write the target's token
            seen[p] = logits.clone()
            return target[:, p]

        out = net.sample_in_place(seq, start, draw, cond)
        assert out is seq and torch.equal(seq, target)
        assert list(seen) == list(range(start, N))  # every position once, in raster order, R G B
        for p, logits in seen.items():
            torch.testing.assert_close(logits, full[:, p], rtol=0, atol=1e-5)


def test_incremental_sampling_errors():
    net = tiny((1, 4, 4), num_classes=2)
    draw = lambda logits, p: logits.argmax(-1)  # noqa: E731
    with pytest.raises(ValueError, match=r"sample_in_place needs seq \(B, 16\)"):
        net.sample_in_place(torch.zeros(2, 12, dtype=torch.long), 0, draw, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="start=17"):
        net.sample_in_place(torch.zeros(2, 16, dtype=torch.long), 17, draw, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="cond must be"):
        net.sample_in_place(torch.zeros(2, 16, dtype=torch.long), 0, draw)
