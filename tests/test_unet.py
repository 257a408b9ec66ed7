"""Tests of the DDPM UNet (lit_genai.nn.unet): shapes, size, conditioning, errors, gradients."""

import pytest
import torch
from torch import nn

from lit_genai.nn.unet import AttnBlock, UNet

SMALL = dict(base_channels=32, num_groups=8, num_res_blocks=1, dropout=0.0)


def _unzero(model: nn.Module) -> nn.Module:
    """Perturb the zero-initialised convs (residual branch ends, attention proj, output) so the
    network's output and gradients are not trivially zero."""
    for name, p in model.named_parameters():
        if name.endswith("weight") and not p.detach().any():
            nn.init.normal_(p, std=0.02)
    return model


def test_output_shape_mnist_28x28():
    model = UNet(in_channels=1, channel_mult=(1, 2, 2), **SMALL)
    x = torch.randn(2, 1, 28, 28)
    assert model(x, torch.tensor([0, 999])).shape == (2, 1, 28, 28)
    assert (model.in_channels, model.out_channels, model.num_classes) == (1, 1, 0)


def test_output_shape_cifar_32x32_and_out_channels_override():
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 500])
    assert UNet(in_channels=3, **{**SMALL, "num_res_blocks": 2})(x, t).shape == (2, 3, 32, 32)
    model = UNet(in_channels=3, out_channels=6, **SMALL)
    assert model.out_channels == 6
    assert model(x, t).shape == (2, 6, 32, 32)


def test_cifar10_config_parameter_count():
    model = UNet(in_channels=3, base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                 attention_levels=(1,), dropout=0.1)  # fmt: skip
    n = sum(p.numel() for p in model.parameters())
    assert n == pytest.approx(35_746_307, rel=0.01)  # the authors' model; this port matches exactly


def test_zero_init_output_is_zero():
    model = UNet(**SMALL)
    assert not model(torch.randn(2, 3, 16, 16), torch.tensor([1, 2])).any()


def test_class_label_changes_output_and_none_is_null_label():
    model = _unzero(UNet(in_channels=1, channel_mult=(1, 2), num_classes=10, **SMALL)).eval()
    x, t = torch.randn(1, 1, 16, 16).expand(3, -1, -1, -1), torch.full((3,), 100)
    with torch.no_grad():
        out = model(x, t, torch.tensor([0, 7, 10]))
        out_none = model(x, t)
    assert not torch.allclose(out[0], out[1])  # same x and t, different class
    assert not torch.allclose(out[0], out[2])
    assert torch.allclose(out_none, out[2].expand_as(out_none))  # y=None == null label num_classes


def test_timestep_changes_output():
    model = _unzero(UNet(**SMALL)).eval()
    x = torch.randn(1, 3, 16, 16).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = model(x, torch.tensor([10, 11]))
        out_float = model(x, torch.tensor([10.0, 11.0]))
    assert not torch.allclose(out[0], out[1])
    assert torch.allclose(out, out_float)  # float timesteps are accepted


def test_attention_matches_explicit_softmax():
    block = _unzero(AttnBlock(16, num_groups=4))
    x = torch.randn(2, 16, 4, 4)
    h = block.norm(x)
    q, k, v = (conv(h).flatten(2) for conv in (block.q, block.k, block.v))  # (B, C, HW)
    w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / 16**0.5, dim=-1)  # (B, HW, HW)
    expected = x + block.proj_out(torch.einsum("bij,bcj->bci", w, v).reshape(2, 16, 4, 4))
    assert torch.allclose(block(x), expected, atol=1e-5)


def test_bad_input_size_raises():
    model = UNet(in_channels=1, channel_mult=(1, 2, 2), **SMALL)
    with pytest.raises(ValueError, match=r"30x28 must be a multiple of 4"):
        model(torch.randn(1, 1, 30, 28), torch.tensor([0]))


def test_bad_num_groups_raises():
    with pytest.raises(ValueError, match=r"num_groups=32 must divide every channel count.*\[24, 48\]"):
        UNet(base_channels=24, channel_mult=(1, 2), num_groups=32)


def test_bad_labels_and_attention_levels_raise():
    with pytest.raises(ValueError, match=r"attention_levels \[3\] out of range"):
        UNet(channel_mult=(1, 2), attention_levels=(3,), **SMALL)
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([0])
    with pytest.raises(ValueError, match=r"num_classes=0"):
        UNet(channel_mult=(1, 2), **SMALL)(x, t, torch.tensor([0]))
    with pytest.raises(ValueError, match=r"labels in \[0, 10\]"):
        UNet(channel_mult=(1, 2), num_classes=10, **SMALL)(x, t, torch.tensor([1.0]))
    with pytest.raises(IndexError):  # out of range: nn.Embedding refuses it (no per-step device sync)
        UNet(channel_mult=(1, 2), num_classes=10, **SMALL)(x, t, torch.tensor([11]))


def test_gradients_reach_every_parameter():
    model = _unzero(UNet(channel_mult=(1, 2), attention_levels=(0, 1), num_classes=4, **SMALL))
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([5, 900]), torch.tensor([1, 4])
    model(x, t, y).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
