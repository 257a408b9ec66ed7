"""Tests of the GAN networks (lit_genai.nn.dcgan, lit_genai.nn.sngan, lit_genai.nn.layers): shapes,
sizes against the references, conditioning, spectral norm, initialisation and errors; and of the one
class-label check (lit_genai.nn.layers.check_labels) that every network runs."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from lit_genai.errors import ConfigError
from lit_genai.gan.losses import gradient_penalty
from lit_genai.nn.dcgan import DCGANDiscriminator, DCGANGenerator
from lit_genai.nn.dit import DiT
from lit_genai.nn.layers import ConditionalBatchNorm2d
from lit_genai.nn.pixelcnn import GatedPixelCNN
from lit_genai.nn.sngan import ResNetDiscriminator, ResNetGenerator
from lit_genai.nn.transformer import GPT
from lit_genai.nn.unet import UNet
from lit_genai.nn.vae import MLPEncoder
from lit_genai.nn.wavenet import WaveNet

SMALL_DCGAN = dict(base_channels=8)
SMALL_RESNET_G, SMALL_RESNET_D = dict(base_channels=16), dict(base_channels=16)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _perturb_class_tables(model: nn.Module) -> nn.Module:
    """Conditional batch norm starts at gain 1, bias 0 for every class; give classes distinct values."""
    for m in model.modules():
        if isinstance(m, ConditionalBatchNorm2d) and m.embed is not None:  # gain 1 + W_g e_y, bias W_b e_y
            nn.init.normal_(m.gain.weight, 0.0, 0.3 / m.embed_dim**0.5)
            nn.init.normal_(m.bias.weight, 0.0, 0.3 / m.embed_dim**0.5)
        elif isinstance(m, ConditionalBatchNorm2d) and m.num_classes > 0:  # per-class tables
            nn.init.normal_(m.gain.weight, 1.0, 0.3)
            nn.init.normal_(m.bias.weight, 0.0, 0.3)
    return model


def _nets(kind: str, image_size: int, channels: int, num_classes: int) -> tuple[nn.Module, nn.Module]:
    if kind == "dcgan":
        G = DCGANGenerator(latent_dim=16, out_channels=channels, image_size=image_size,
                           num_classes=num_classes, **SMALL_DCGAN)  # fmt: skip
        D = DCGANDiscriminator(in_channels=channels, image_size=image_size, num_classes=num_classes,
                               **SMALL_DCGAN)  # fmt: skip
    else:
        G = ResNetGenerator(latent_dim=16, out_channels=channels, image_size=image_size,
                            num_classes=num_classes, **SMALL_RESNET_G)  # fmt: skip
        D = ResNetDiscriminator(in_channels=channels, image_size=image_size, num_classes=num_classes,
                                **SMALL_RESNET_D)  # fmt: skip
    return G, D


CASES = [("dcgan", 28, 1), ("dcgan", 32, 3), ("dcgan", 64, 3), ("resnet", 32, 3), ("resnet", 48, 1)]


@pytest.mark.parametrize("kind, image_size, channels", CASES)
@pytest.mark.parametrize("num_classes", [0, 10])
def test_shapes_range_and_attributes(kind, image_size, channels, num_classes):
    G, D = _nets(kind, image_size, channels, num_classes)
    y = torch.tensor([3, 7]) if num_classes else None
    x = G(torch.randn(2, 16), y)
    assert x.shape == (2, channels, image_size, image_size)
    assert x.min() >= -1 and x.max() <= 1
    logits = D(x, y)
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    assert (G.latent_dim, G.out_channels, G.image_size) == (16, channels, image_size)
    assert G.num_classes == D.num_classes == num_classes
    assert (D.in_channels, D.image_size) == (channels, image_size)


@pytest.mark.parametrize("kind", ["dcgan", "resnet"])
def test_every_parameter_is_trained_through_the_adversarial_game(kind):
    G, D = _nets(kind, 32, 3, num_classes=10)
    G = _perturb_class_tables(G)  # zero class projections would give the class embedding no gradient yet
    y = torch.tensor([1, 2, 3])
    D(G(torch.randn(3, 16), y), y).sum().backward()
    for name, p in [*G.named_parameters(), *D.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", ["dcgan", "resnet"])
def test_label_changes_generator_output_and_discriminator_logit(kind):
    G, D = _nets(kind, 32, 3, num_classes=10)
    G, D = _perturb_class_tables(G).eval(), D.eval()
    z, x = torch.randn(1, 16).expand(2, -1), torch.randn(1, 3, 32, 32).expand(2, -1, -1, -1)
    y = torch.tensor([0, 5])
    with torch.no_grad():
        images, logits = G(z, y), D(x, y)
    assert not torch.allclose(images[0], images[1])  # same z, different class
    assert not torch.isclose(logits[0], logits[1])  # same image, different class (projection)


def test_resnet_generator_starts_class_blind_as_the_authors():
    G = ResNetGenerator(latent_dim=16, num_classes=10, **SMALL_RESNET_G).eval()
    z = torch.randn(1, 16).expand(2, -1)
    with torch.no_grad():  # conditional batch norm: gain 1, bias 0 for every class at init
        torch.testing.assert_close(*G(z, torch.tensor([0, 5])).unbind(0))


def test_labels_are_required_exactly_when_conditional():
    G, D = _nets("dcgan", 28, 1, num_classes=0)
    with pytest.raises(ValueError, match="num_classes=0"):
        G(torch.randn(2, 16), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_classes=0"):
        D(torch.randn(2, 1, 28, 28), torch.tensor([0, 1]))
    G, D = _nets("resnet", 32, 3, num_classes=10)
    with pytest.raises(ValueError, match=r"\(2,\) int64 labels"):
        G(torch.randn(2, 16))
    with pytest.raises(ValueError, match=r"\(2,\) int64 labels"):
        D(torch.randn(2, 3, 32, 32), torch.tensor([0.0, 1.0]))


def test_wrong_sizes_raise_actionable_errors():
    with pytest.raises(ConfigError, match="28, 32, 64"):
        DCGANGenerator(image_size=48)
    with pytest.raises(ConfigError, match="multiple of 8"):
        ResNetGenerator(image_size=28)
    with pytest.raises(ValueError, match=r"expected x \(B, 3, 32, 32\)"):
        DCGANDiscriminator(**SMALL_DCGAN)(torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"z must be \(B, 128\)"):
        ResNetGenerator(**SMALL_RESNET_G)(torch.randn(2, 100))


def test_dcgan_64_matches_the_pytorch_dcgan_example_size():
    # Radford et al. 2016 Fig. 1 layout, no conv biases (dcgan.torch / PyTorch examples/dcgan)
    assert _count(DCGANGenerator(latent_dim=100, out_channels=3, image_size=64)) == 3_576_704
    assert _count(DCGANDiscriminator(in_channels=3, image_size=64)) == 2_765_568


def test_sngan_cifar10_resnets_match_the_authors_size():
    # By hand from the authors' Chainer code (pfnet-research/sngan_projection, resnet_32.py and
    # snresnet_32.py): G = dense 528,384 + 3 blocks x 1,246,976 + BN 512 + conv 6,915;
    # D = 151,680 (optimized block) + 311,680 + 2 x 295,168 + dense 128 (no bias).
    # Torch-Mimicry reports G 4.3M, D 1.0M (its D's dense layer has one bias more).
    assert _count(ResNetGenerator()) == 4_276_739
    assert _count(ResNetDiscriminator()) == 1_053_824
    # projection: one 128-wide embedding row per class; conditional BN: 2 x 256 per class, 6 layers
    assert _count(ResNetDiscriminator(num_classes=10)) == 1_053_824 + 10 * 128
    assert _count(ResNetGenerator(num_classes=10)) == 4_276_739 + 6 * 10 * 2 * 256 - 6 * 2 * 256


def _weighted(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]


@pytest.mark.parametrize(
    "make",
    [
        lambda sn: ResNetDiscriminator(num_classes=10, spectral_norm=sn, **SMALL_RESNET_D),
        lambda sn: DCGANDiscriminator(num_classes=10, batch_norm=False, spectral_norm=sn, **SMALL_DCGAN),
    ],
)
def test_spectral_norm_wraps_every_layer_when_asked(make):
    with_sn, without = make(True), make(False)
    assert all(parametrize.is_parametrized(m, "weight") for m in _weighted(with_sn))
    assert not any(parametrize.is_parametrized(m) for m in _weighted(without))
    assert _count(with_sn) == _count(without)  # the power-iteration vectors are buffers
    for _ in range(3):  # training-mode forwards run the power iteration
        with_sn(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    for m in _weighted(with_sn):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            assert torch.linalg.matrix_norm(m.weight.detach(), ord=2).item() == pytest.approx(1.0, rel=1e-3)


def _raw_weight(m: nn.Module) -> torch.Tensor:
    """The stored weight: the original under a spectral-norm parametrization."""
    return m.parametrizations.weight.original if parametrize.is_parametrized(m, "weight") else m.weight


def test_dcgan_init_statistics():
    G = DCGANGenerator(num_classes=10)
    D = DCGANDiscriminator(num_classes=10, spectral_norm=True)
    convs = [m for m in [*G.modules(), *D.modules()] if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    weights = torch.cat([_raw_weight(m).detach().flatten() for m in convs])
    assert weights.mean().abs() < 1e-3
    assert weights.std().item() == pytest.approx(0.02, rel=0.02)  # N(0, 0.02), Radford et al. sec. 4
    table_G = DCGANGenerator(num_classes=10, class_embed_dim=0)  # per-class tables
    class_gains = [m.gain.weight for m in table_G.modules() if isinstance(m, ConditionalBatchNorm2d)]
    bn_gains = [m.weight for m in D.modules() if isinstance(m, nn.BatchNorm2d)]
    gains = torch.cat([g.detach().flatten() for g in class_gains + bn_gains])
    assert gains.mean().item() == pytest.approx(1.0, abs=2e-3)
    assert gains.std().item() == pytest.approx(0.02, rel=0.1)  # N(1, 0.02)


def test_dcgan_conditional_batch_norm_starts_at_gain_1_bias_0_after_dcgan_init():
    # dcgan_init_ visits the class embedding and projections (Embedding / Linear -> N(0, 0.02))
    # before their ConditionalBatchNorm2d; the layer's own rule must win: every class gain 1, bias 0.
    G = DCGANGenerator(latent_dim=16, out_channels=1, image_size=28, num_classes=10, **SMALL_DCGAN)
    for m in G.norms:
        gain, bias = m.class_affine(torch.arange(10))  # (K, C) each
        torch.testing.assert_close(gain, torch.ones_like(gain))
        torch.testing.assert_close(bias, torch.zeros_like(bias))
        assert m.embed.weight.std().item() == pytest.approx(1.0, rel=0.2)  # N(0, 1), not N(0, 0.02)


@pytest.mark.parametrize("class_input", [False, True])
def test_dcgan_one_hot_input_lets_the_label_set_a_layout_from_the_start(class_input):
    # Conditional BN starts class-blind (gain 1, bias 0) and only rescales whole channels of the
    # bias-free first layer; the one-hot label concatenated to z has its own first-layer weights.
    G = DCGANGenerator(latent_dim=16, out_channels=1, image_size=28, num_classes=10,
                       class_input=class_input, **SMALL_DCGAN).eval()  # fmt: skip
    z = torch.randn(1, 16).expand(2, -1)
    with torch.no_grad():
        a, b = G(z, torch.tensor([0, 5])).unbind(0)
    assert (not torch.allclose(a, b)) if class_input else torch.equal(a, b)
    assert G.convs[0].in_channels == 16 + (10 if class_input else 0)


@pytest.mark.parametrize("class_embed_dim, fast", [(0, False), (128, True)])
def test_dcgan_class_gains_can_outpace_adams_per_step_bound(class_embed_dim, fast):
    # The cause of the class-blind conditional DCGAN on MNIST: Adam moves each parameter by about lr
    # per step at most while its gradient keeps its sign (Kingma & Ba 2015, sec. 2.1), so per-class
    # gain / bias tables need ~1 / lr = 5,000 steps at lr 2e-4 to change a class's gain by 1 -- the
    # demo's whole run. A gain computed from a class embedding, 1 + W_g e_y, sums E such moves.
    torch.manual_seed(0)
    G = DCGANGenerator(latent_dim=16, out_channels=1, image_size=28, num_classes=10,
                       class_embed_dim=class_embed_dim, class_input=False, **SMALL_DCGAN)  # fmt: skip
    lr, steps = 2e-4, 20
    opt = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.5, 0.999))
    z, y = torch.randn(20, 16), torch.arange(20) % 2
    target = torch.where(y == 0, 1.0, -1.0)[:, None, None, None]  # class 0 bright, class 1 dark
    norm, classes = G.norms[-1], torch.tensor([0, 1])
    with torch.no_grad():
        start = norm.class_affine(classes)  # gain, bias: (2, C) each
    for _ in range(steps):
        opt.zero_grad()
        ((G(z, y) - target) ** 2).mean().backward()
        opt.step()
    with torch.no_grad():
        moved = [
            after - before for after, before in zip(norm.class_affine(classes), start, strict=True)
        ]  # (2, C) each
    spread = max((d[0] - d[1]).abs().max().item() for d in moved)  # how far the classes moved apart
    table_pace = 2 * steps * lr  # two table entries moving apart by about lr per step each
    # measured: tables 1.3 x table_pace, embedding 95 x
    assert (spread > 20 * table_pace) if fast else (spread < 2 * table_pace), spread / table_pace


def test_resnet_sum_pooling_is_64_times_mean_pooling_at_32x32():
    torch.manual_seed(3)
    sum_d = ResNetDiscriminator(spectral_norm=False, **SMALL_RESNET_D)
    mean_d = ResNetDiscriminator(spectral_norm=False, pooling="mean", **SMALL_RESNET_D)
    mean_d.load_state_dict(sum_d.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(sum_d(x), 64 * mean_d(x))  # 8x8 final map


def test_wgan_gp_critic_penalty_trains_every_weight():
    # The WGAN-GP ResNet critic: no spectral norm, no batch norm, mean pooling
    D = ResNetDiscriminator(spectral_norm=False, pooling="mean", **SMALL_RESNET_D)
    real, fake = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    gradient_penalty(D, real, fake).mean().backward()
    assert all(p.grad is not None for name, p in D.named_parameters() if name.endswith("weight"))


def _timesteps() -> torch.Tensor:
    return torch.tensor([0, 1])


def _tokens(n: int) -> torch.Tensor:
    return torch.zeros(2, n, dtype=torch.long)


# One network of each file: (name, network of K classes, forward on a batch of 2 with labels y, whether
# a conditional network takes y=None as the null label for every example).
LABELLED_NETWORKS = [
    ("MLPEncoder", lambda k: MLPEncoder(hidden=[8], latent_dim=2, num_classes=k),
     lambda net, y: net(torch.randn(2, 1, 28, 28), y), False),
    ("DCGANGenerator", lambda k: DCGANGenerator(latent_dim=16, out_channels=1, image_size=28, num_classes=k,
                                                **SMALL_DCGAN),
     lambda net, y: net(torch.randn(2, 16), y), False),
    ("ResNetDiscriminator", lambda k: ResNetDiscriminator(num_classes=k, **SMALL_RESNET_D),
     lambda net, y: net(torch.randn(2, 3, 32, 32), y), False),
    ("UNet", lambda k: UNet(in_channels=1, base_channels=8, channel_mult=(1,), num_res_blocks=1,
                            attention_levels=(), dropout=0.0, num_groups=4, num_classes=k),
     lambda net, y: net(torch.randn(2, 1, 8, 8), _timesteps(), y), True),
    ("DiT", lambda k: DiT(in_channels=1, image_size=8, hidden_size=16, depth=1, num_heads=2, num_classes=k),
     lambda net, y: net(torch.randn(2, 1, 8, 8), _timesteps(), y), True),
    ("GPT", lambda k: GPT(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=8, num_classes=k),
     lambda net, y: net(_tokens(4), y), False),
    ("GatedPixelCNN", lambda k: GatedPixelCNN(image_shape=[1, 4, 4], levels=2, hidden=4, n_layers=1,
                                              output_hidden=4, num_classes=k),
     lambda net, y: net(_tokens(16), y), False),
    ("WaveNet", lambda k: WaveNet(levels=4, residual_channels=2, gate_channels=2, skip_channels=2,
                                  layers_per_stack=1, stacks=1, num_classes=k),
     lambda net, y: net(_tokens(4), y), False),
]  # fmt: skip


@pytest.mark.parametrize(
    "name, make, call, none_is_null", LABELLED_NETWORKS, ids=[case[0] for case in LABELLED_NETWORKS]
)
def test_every_network_checks_its_labels_alike(name, make, call, none_is_null):
    labels = torch.tensor([0, 1])
    call(make(0), None)  # unconditional: no labels
    with pytest.raises(ValueError, match=rf"^{name}: got class labels \w+ but num_classes=0"):
        call(make(0), labels)
    conditional = make(3)
    call(conditional, labels)
    wrong = rf"^{name}: num_classes=3, so \w+ must be \(2,\) int64 labels in \[0, 3[\])]"
    for bad in (labels[:, None], labels[:1], labels.float()):  # (2, 1), (1,) and float labels
        with pytest.raises(ValueError, match=wrong):
            call(conditional, bad)
    if none_is_null:  # y=None: the null label 3 for every example
        call(conditional, None)
    else:
        with pytest.raises(ValueError, match=wrong + ".*got None"):
            call(conditional, None)
