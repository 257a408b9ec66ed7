"""The Diffusion Transformer: shapes, patchify, adaLN-Zero initialisation, conditioning, training, errors."""

import pytest
import torch
from helpers import quiet_trainer
from torch import nn

from lit_genai import paradigm
from lit_genai.data import MNIST5k
from lit_genai.diffusion import Diffusion
from lit_genai.errors import ConfigError
from lit_genai.nn.dit import DiT, frequency_embedding, patchify, sincos_pos_embed_2d, unpatchify

TINY = dict(hidden_size=32, depth=2, num_heads=2)


def _perturb_zero_inits(net: DiT, std: float = 0.1) -> None:
    """Give the zero-initialised adaLN and output layers random weights, as training would."""
    layers = [block.adaLN_modulation[-1] for block in net.blocks]
    layers += [net.final_layer.adaLN_modulation[-1], net.final_layer.linear]
    for layer in layers:
        for p in layer.parameters():
            nn.init.normal_(p, std=std)


@pytest.mark.parametrize(
    "channels, size, patch, learn_sigma",
    [(1, 28, 4, False), (1, 28, 2, False), (3, 32, 8, True), (4, 8, 1, False), (3, 16, 16, False)],
)
def test_output_shape(channels, size, patch, learn_sigma):
    net = DiT(in_channels=channels, image_size=size, patch_size=patch, learn_sigma=learn_sigma, **TINY)
    _perturb_zero_inits(net)
    x, t = torch.randn(3, channels, size, size), torch.tensor([0, 17, 999])
    out = net(x, t)
    assert out.shape == (3, (2 if learn_sigma else 1) * channels, size, size)
    assert net.out_channels == out.shape[1] and net.pos_embed.shape == (1, (size // patch) ** 2, 32)


@pytest.mark.parametrize("patch", [1, 2, 4, 7])
def test_unpatchify_inverts_patchify_and_patches_are_blocks(patch):
    x = torch.randn(2, 3, 28, 28)
    tokens = patchify(x, patch)
    assert tokens.shape == (2, (28 // patch) ** 2, patch * patch * 3)
    assert torch.equal(unpatchify(tokens, patch, 3), x)
    # Token n = (row i, column j) holds the pixels of block (i, j), ordered (row, column, channel).
    i, j, h = 1 % (28 // patch), 2 % (28 // patch), 28 // patch
    block = x[:, :, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch]  # (B, C, p, p)
    assert torch.equal(tokens[:, i * h + j], block.permute(0, 2, 3, 1).reshape(2, -1))


def test_the_patch_embedding_conv_is_a_linear_map_of_the_patches():
    net = DiT(in_channels=3, image_size=16, patch_size=4, **TINY)
    x = torch.randn(2, 3, 16, 16)
    conv = net.x_embedder(x).flatten(2).transpose(1, 2)  # (B, N, D)
    weight = net.x_embedder.weight.permute(0, 2, 3, 1).reshape(32, -1)  # (D, p*p*C) in patchify order
    linear = patchify(x, 4) @ weight.T + net.x_embedder.bias
    torch.testing.assert_close(conv, linear, rtol=1e-5, atol=1e-5)


def test_sincos_positional_embedding_matches_the_closed_form():
    dim, grid = 8, 3
    emb = sincos_pos_embed_2d(dim, grid)  # (9, 8): [cols (4), rows (4)], each [sin (2), cos (2)]
    assert emb.shape == (9, 8)
    omega = torch.tensor([1.0, 1.0 / 100])  # 10000^(-2i / (dim / 2)), i = 0, 1
    row, col = 2, 1
    expected = torch.cat([(col * omega).sin(), (col * omega).cos(), (row * omega).sin(), (row * omega).cos()])
    torch.testing.assert_close(emb[row * grid + col], expected)
    assert len({tuple(e.tolist()) for e in emb}) == 9  # every position distinct


def test_frequency_embedding_matches_the_closed_form():
    t = torch.tensor([0, 3])
    emb = frequency_embedding(t, dim=4, max_period=100.0)
    freqs = torch.tensor([1.0, 0.1])  # 100^(-i / 2), i = 0, 1
    torch.testing.assert_close(emb[1], torch.cat([(3 * freqs).cos(), (3 * freqs).sin()]))
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1.0, 0.0, 0.0]))


def test_adaln_zero_makes_every_block_the_identity_and_the_output_zero():
    net = DiT(in_channels=1, image_size=28, patch_size=4, num_classes=10, **TINY)
    x, c = torch.randn(2, 49, 32), torch.randn(2, 32)
    for block in net.blocks:
        assert torch.equal(block(x, c), x)
    out = net(torch.randn(2, 1, 28, 28), torch.tensor([5, 500]), torch.tensor([3, 10]))
    assert torch.equal(out, torch.zeros_like(out))
    _perturb_zero_inits(net)
    assert not torch.allclose(net.blocks[0](x, c), x)


def test_the_class_embedding_has_a_null_row_and_y_none_is_the_null_label():
    net = DiT(in_channels=1, image_size=8, patch_size=2, num_classes=10, **TINY)
    assert net.y_embedder.weight.shape == (11, 32)
    assert DiT(in_channels=1, image_size=8, **TINY).y_embedder is None
    _perturb_zero_inits(net)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 900])
    assert torch.equal(net(x, t), net(x, t, torch.full((2,), 10)))
    with pytest.raises(ValueError, match="num_classes=0"):
        DiT(in_channels=1, image_size=8, **TINY)(x, t, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="int64"):
        net(x, t, torch.zeros(2))


def test_the_output_depends_on_t_and_y_once_the_zero_inits_move():
    net = DiT(in_channels=1, image_size=8, patch_size=2, num_classes=10, **TINY)
    _perturb_zero_inits(net)
    x = torch.randn(1, 1, 8, 8).expand(2, -1, -1, -1)  # the same image twice
    by_t = net(x, torch.tensor([10, 600]), torch.tensor([3, 3]))
    by_y = net(x, torch.tensor([10, 10]), torch.tensor([3, 7]))
    assert torch.equal(by_y[0], by_t[0])
    assert (by_t[0] - by_t[1]).abs().max() > 1e-3
    assert (by_y[0] - by_y[1]).abs().max() > 1e-3


def test_num_timesteps_rescales_t_to_the_1000_step_embedding():
    short = DiT(in_channels=1, image_size=8, num_timesteps=50, **TINY)
    full = DiT(in_channels=1, image_size=8, num_timesteps=1000, **TINY)
    _perturb_zero_inits(short)
    full.load_state_dict(short.state_dict())
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(short(x, torch.tensor([1, 49])), full(x, torch.tensor([20, 980])))


def test_a_training_step_moves_the_zero_inits_and_makes_the_output_conditional():
    net = DiT(in_channels=1, image_size=8, patch_size=2, num_classes=10, **TINY)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, t, y = torch.randn(8, 1, 8, 8), torch.randint(0, 1000, (8,)), torch.randint(0, 10, (8,))
    target = torch.randn(8, 1, 8, 8)
    for _ in range(3):  # step 1 moves the output layer, after which the gates get gradients
        optimizer.zero_grad()
        nn.functional.mse_loss(net(x, t, y), target).backward()
        optimizer.step()
    assert net.blocks[0].adaLN_modulation[-1].weight.abs().max() > 0
    same = x[:1].expand(2, -1, -1, -1)
    out_y = net(same, torch.tensor([7, 7]), torch.tensor([1, 2]))
    out_t = net(same, torch.tensor([7, 700]), torch.tensor([1, 1]))
    assert not torch.allclose(out_y[0], out_y[1]) and not torch.allclose(out_t[0], out_t[1])


def test_diffusion_with_a_tiny_dit_learns_on_mnist(tmp_path):
    torch.manual_seed(0)
    net = DiT(in_channels=1, image_size=28, patch_size=4, num_classes=10, num_timesteps=100, **TINY)
    module = Diffusion(
        net,
        sample_shape=(1, 28, 28),
        num_classes=10,
        num_timesteps=100,
        optimizer=lambda params: torch.optim.Adam(params, lr=2e-3),
    )
    data = MNIST5k(batch_size=32)
    trainer = quiet_trainer(tmp_path, max_steps=40, limit_val_batches=2, val_check_interval=40)
    before = trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    trainer.fit(module, datamodule=data)
    after = trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    assert before == pytest.approx(1.0, abs=0.1)  # zero output: E[eps^2] = 1
    assert after < 0.5 * before, (before, after)
    samples = module.sample(2, cond=torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0), steps=2)
    assert samples.shape == (2, 1, 28, 28)


def test_check_net_accepts_it_on_mnist_and_names_the_key_to_change():
    data = MNIST5k()
    net = DiT(in_channels=1, image_size=28, patch_size=4, num_classes=10, **TINY)
    paradigm.check_net(net, "model.net", sample_shape=data.sample_shape, num_classes=data.num_classes)
    wrong = DiT(in_channels=1, image_size=32, patch_size=4, **TINY)
    with pytest.raises(ConfigError, match=r"^model\.net\.image_size=32 but the data's images are 28x28"):
        paradigm.check_net(wrong, "model.net", sample_shape=data.sample_shape, num_classes=10)
    with pytest.raises(ValueError, match=r"expected x \(B, 1, 28, 28\)"):
        net(torch.randn(1, 1, 32, 32), torch.zeros(1, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_size=28, patch_size=3), "image_size=28 is not a multiple of patch_size=3"),
        (dict(image_size=28, patch_size=2, hidden_size=30, num_heads=4), "hidden_size=30 is not divisible"),
        (dict(image_size=28, patch_size=2, hidden_size=18, num_heads=3), "multiple of 4"),
    ],
)
def test_bad_sizes_are_one_line_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        DiT(in_channels=1, **{**TINY, **kwargs})
    assert "\n" not in str(info.value)
