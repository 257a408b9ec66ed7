"""Property tests: a random small configuration of any paradigm trains a step or is one clear error.

Hypothesis draws the init arguments of each module and its networks, as a user could write them in
YAML (the rows of tests/test_contract.py, at random small sizes and choices: channels, widths, heads,
classes, sample shapes, schedules, samplers, losses, ...), and a random batch in the paradigm's
format (docs/architecture.md, "Batches"). Each configuration must either

- train one step on that batch (finite weights afterwards) and draw two samples, or
- stop with one ``LitGenAIError`` (``ConfigError``) line, which the command line prints as
  ``lit-genai: error: ...``;

any other exception, an internal traceback a user could not act on, fails the test and hypothesis
shrinks it to the smallest configuration that shows it. The data side is drawn consistent (labels
below the data's classes, tokens below its vocabulary), as a data module gives it; the model side
is drawn freely, mismatches with the data included, since that is what a user types.

The default run draws ``FAST`` examples per paradigm (seconds each); ``-m slow`` draws ``THOROUGH``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers import quiet_trainer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from lit_genai.ar import NextToken, NextTokenSampling
from lit_genai.diffusion import EDM, Diffusion, DiffusionSampling, EDMSampling, FlowMatching, FlowSampling
from lit_genai.errors import LitGenAIError
from lit_genai.gan import GAN, GANSampling
from lit_genai.masked import MaskedSampling, MaskedTokens
from lit_genai.nn import UNet
from lit_genai.nn.autoencoder import Decoder, Encoder
from lit_genai.nn.dcgan import DCGANDiscriminator, DCGANGenerator
from lit_genai.nn.dit import DiT
from lit_genai.nn.pixelcnn import GatedPixelCNN
from lit_genai.nn.sngan import ResNetDiscriminator, ResNetGenerator
from lit_genai.nn.transformer import GPT
from lit_genai.nn.vae import MLPDecoder, MLPEncoder
from lit_genai.nn.vq import VectorQuantizer
from lit_genai.nn.wavenet import WaveNet
from lit_genai.vae import VAE, VQVAE, VAESampling
from lit_genai.vae.autoencoder import KLAutoencoder

# Lightning notices at each of the many one-step fits, none about the configuration drawn (the third:
# latent diffusion's frozen first stage is in eval mode on purpose).
pytestmark = [
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
    pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated"),
    pytest.mark.filterwarnings(r"ignore:Found \d+ module\(s\) in eval mode at the start of training"),
]

K = 3  # the data's classes
TEXT = list("abcdefghijklmnop")  # the toy alphabet of the text rows (V <= 16)

# No example database (nothing written into the checkout); a step takes longer than hypothesis'
# default deadline on a busy CPU; ``request`` (function-scoped) only fetches session fixtures.
COMMON = dict(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FAST = settings(max_examples=12, derandomize=True, **COMMON)  # the same examples at every run
THOROUGH = settings(max_examples=150, **COMMON)

Draw = Callable[[st.SearchStrategy], Any]
Case = tuple[Callable[[], Any], tuple[torch.Tensor, ...]]  # (build the module, a training batch)


# ---------------------------------------------------------------------- the data side


def _image_batch(draw: Draw, sizes=(4, 6, 7, 8, 12, 16)) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (B, C, H, W) in [-1, 1], y (B,) labels below K), as an image data module gives them."""
    B = draw(st.integers(1, 4))
    C = draw(st.sampled_from([1, 2, 3]))
    H = draw(st.sampled_from(sizes))
    return torch.rand(B, C, H, H) * 2 - 1, torch.randint(0, K, (B,))


def _classes(draw: Draw) -> int:
    """A module's number of classes: the data's, K (the command line links it, and refuses another
    value), or 0 for data without classes. Its networks' are drawn freely (``_one_of``)."""
    return draw(st.sampled_from([K, 0]))


def _mostly(draw: Draw, usual: Any, others: list[Any]) -> Any:
    """Mostly (7 in 8) ``usual``: the value the data implies (as the command line links it) or one
    that fits the other settings; sometimes one of ``others``. Hypothesis shrinks the choice towards
    0, i.e. towards ``usual``, so a failure is reported with as few odd values as it needs."""
    return usual if draw(st.integers(0, 7)) < 7 else draw(st.sampled_from(others))


# ---------------------------------------------------------------------- networks


def _unet(draw: Draw, channels: int, classes: int, levels: list[int] | None = None) -> Callable[[], UNet]:
    levels = levels or draw(st.lists(st.sampled_from([1, 2]), min_size=1, max_size=3))
    kwargs = dict(
        in_channels=_mostly(draw, channels, [1, 2, 3]),
        base_channels=(base := draw(st.sampled_from([2, 4, 6, 8]))),
        channel_mult=levels,
        num_res_blocks=draw(st.integers(1, 2)),
        attention_levels=_mostly(
            draw, draw(st.lists(st.integers(0, len(levels) - 1), max_size=2, unique=True)), [[len(levels)]]
        ),
        dropout=draw(st.sampled_from([0.0, 0.1])),
        num_groups=_mostly(draw, draw(st.sampled_from([g for g in (1, 2, 4, 8) if base % g == 0])), [4, 8]),
        num_classes=_mostly(draw, classes, [0, 2, 5]),
    )
    return lambda: UNet(**kwargs)


def _dit(draw: Draw, channels: int, size: int, classes: int, timesteps: int) -> Callable[[], DiT]:
    heads = draw(st.integers(1, 4))
    kwargs = dict(
        in_channels=_mostly(draw, channels, [1, 2, 3]),
        image_size=_mostly(draw, size, [4, 6, 8, 16]),
        patch_size=_mostly(draw, draw(st.sampled_from([p for p in (1, 2, 4) if size % p == 0])), [3, 4]),
        hidden_size=draw(st.sampled_from([4, 8, 12, 16])),
        depth=draw(st.integers(1, 2)),
        num_heads=heads,
        mlp_ratio=draw(st.sampled_from([1.0, 2.0, 4.0])),
        num_classes=_mostly(draw, classes, [0, 2, 5]),
        learn_sigma=_mostly(draw, False, [True]),
        num_timesteps=_mostly(draw, timesteps, [10, 1000]),
    )
    return lambda: DiT(**kwargs)


def _gpt(draw: Draw, vocab: int, block: int, classes: int, causal: bool) -> Callable[[], GPT]:
    kwargs = dict(
        vocab_size=_mostly(draw, vocab, [2, 8, 17]),
        block_size=_mostly(draw, block, [4, 16, 32]),
        n_layer=draw(st.integers(1, 2)),
        n_head=(heads := draw(st.integers(1, 4))),
        n_embd=_mostly(draw, heads * draw(st.sampled_from([2, 4])), [4, 6, 8]),
        dropout=draw(st.sampled_from([0.0, 0.1])),
        bias=draw(st.booleans()),
        causal=_mostly(draw, causal, [not causal]),
        num_classes=_mostly(draw, classes, [0, 2, 5]),
        activation=draw(st.sampled_from(["gelu", "gelu_tanh"])),
        rope=draw(st.booleans()),
    )
    return lambda: GPT(**kwargs)


# ---------------------------------------------------------------------- paradigms


def _diffusion(draw: Draw) -> Case:
    x, y = _image_batch(draw)
    C, H = x.shape[1], x.shape[2]
    classes, timesteps = _classes(draw), draw(st.integers(1, 40))
    net = draw(st.sampled_from([_unet, _dit]))
    make_net = _unet(draw, C, classes) if net is _unet else _dit(draw, C, H, classes, timesteps)
    sampling = dict(
        sampler=draw(st.sampled_from(["ddpm", "ddim", "euler", "heun", "dpm_solver++"])),
        steps=draw(st.integers(1, 4)),
        eta=draw(st.sampled_from([0.0, 1.0])),
        skip=draw(st.sampled_from(["uniform", "quadratic"])),
        variance=draw(st.sampled_from(["beta", "beta_tilde"])),
        guidance_scale=draw(st.sampled_from([0.0, 1.0, 2.0])),
        clip_denoised=draw(st.booleans()),
        sigma_max=draw(st.sampled_from([None, 80.0])),
    )
    kwargs = dict(
        sample_shape=_mostly(draw, (C, H, H), [(1, 8, 8), (3, H, H)]),
        num_classes=classes,
        num_timesteps=timesteps,
        beta_schedule=draw(st.sampled_from(["linear", "cosine", "sigmoid"])),
        prediction=draw(st.sampled_from(["eps", "x0", "v"])),
        min_snr_gamma=draw(st.sampled_from([None, 1.0, 5.0])),
        p_uncond=draw(st.sampled_from([0.0, 0.1, 1.0])),
        warmup_steps=draw(st.sampled_from([0, 3])),
    )
    return lambda: Diffusion(make_net(), **kwargs, sampling=DiffusionSampling(**sampling)), (x, y)


def _latent_diffusion(draw: Draw, autoencoder: str) -> Case:
    """Diffusion of the 2x7x7 latents of conftest.py's KL autoencoder of 1x28x28 images."""
    B = draw(st.integers(1, 3))
    C, H = _mostly(draw, 1, [3]), _mostly(draw, 28, [32])
    x, y = torch.rand(B, C, H, H) * 2 - 1, torch.randint(0, K, (B,))
    classes = _classes(draw)
    if draw(st.booleans()):
        levels = _mostly(draw, [1], [[1, 2]])  # 7x7 latents: one level, or a size that does not halve
        make_net = _unet(draw, 2, classes, levels=levels)
    else:
        make_net = _dit(draw, 2, 7, classes, 30)
    kwargs = dict(
        sample_shape=(C, H, H),
        num_classes=classes,
        num_timesteps=30,
        beta_schedule=draw(st.sampled_from(["linear", "cosine"])),
        prediction=draw(st.sampled_from(["eps", "v"])),
        bpd_timesteps=_mostly(draw, 0, [2]),  # no bound in bits per pixel for latents
        autoencoder=autoencoder,
    )
    sampling = DiffusionSampling(
        sampler=draw(st.sampled_from(["ddim", "dpm_solver++"])),
        steps=draw(st.integers(1, 3)),
        clip_denoised=draw(st.booleans()),
    )
    return lambda: Diffusion(make_net(), **kwargs, sampling=sampling), (x, y)


def _edm(draw: Draw) -> Case:
    x, y = _image_batch(draw)
    C, H = x.shape[1], x.shape[2]
    classes = _classes(draw)
    make_net = _unet(draw, C, classes)
    sampling = dict(
        sampler=draw(st.sampled_from(["euler", "heun", "dpm_solver++"])),
        steps=draw(st.integers(1, 4)),
        sigma_min=draw(st.sampled_from([0.002, 0.1])),
        sigma_max=draw(st.sampled_from([1.0, 80.0])),
        rho=draw(st.sampled_from([1.0, 7.0])),
        s_churn=draw(st.sampled_from([0.0, 40.0])),
        guidance_scale=draw(st.sampled_from([0.0, 1.5])),
    )
    kwargs = dict(
        sample_shape=_mostly(draw, (C, H, H), [(1, 8, 8), (3, H, H)]),
        num_classes=classes,
        sigma_data=draw(st.sampled_from([0.5, 1.0])),
        p_mean=draw(st.sampled_from([-1.2, 0.0])),
        p_std=draw(st.sampled_from([0.5, 1.2])),
        p_uncond=draw(st.sampled_from([0.0, 0.1])),
    )
    return lambda: EDM(make_net(), **kwargs, sampling=EDMSampling(**sampling)), (x, y)


def _flow(draw: Draw) -> Case:
    x, y = _image_batch(draw)
    C, H = x.shape[1], x.shape[2]
    classes = _classes(draw)
    net = draw(st.sampled_from([_unet, _dit]))
    make_net = _unet(draw, C, classes) if net is _unet else _dit(draw, C, H, classes, 1000)
    sampling = dict(
        sampler=draw(st.sampled_from(["euler", "heun", "dpm_solver++"])),
        steps=draw(st.integers(1, 4)),
        time_shift=draw(st.sampled_from([1.0, 3.0])),
        guidance_scale=draw(st.sampled_from([0.0, 2.0])),
    )
    kwargs = dict(
        sample_shape=_mostly(draw, (C, H, H), [(1, 8, 8), (3, H, H)]),
        num_classes=classes,
        time_sampling=draw(st.sampled_from(["uniform", "logit_normal"])),
        p_uncond=draw(st.sampled_from([0.0, 0.1])),
    )
    return lambda: FlowMatching(make_net(), **kwargs, sampling=FlowSampling(**sampling)), (x, y)


def _gan(draw: Draw) -> Case:
    resnet = draw(st.booleans())
    x, y = _image_batch(draw, sizes=(16, 28, 32) if resnet else (28, 32))
    C, H = x.shape[1], x.shape[2]
    classes = _classes(draw)
    latent = draw(st.sampled_from([2, 8]))
    g = dict(
        latent_dim=latent,
        out_channels=_mostly(draw, C, [1, 3]),
        image_size=_mostly(draw, H, [28, 32, 64]),
        base_channels=draw(st.sampled_from([2, 4, 8])),
        num_classes=_mostly(draw, classes, [0, 2]),
    )
    d = dict(
        in_channels=_mostly(draw, C, [1, 3]),
        image_size=_mostly(draw, H, [28, 32, 64]),
        base_channels=draw(st.sampled_from([2, 4, 8])),
        num_classes=_mostly(draw, classes, [0, 2]),
    )
    if resnet:
        d["pooling"] = draw(st.sampled_from(["sum", "mean"]))
        make_g, make_d = lambda: ResNetGenerator(**g), lambda: ResNetDiscriminator(**d)
    else:
        g["class_input"] = draw(st.booleans())
        d["batch_norm"] = draw(st.booleans())
        d["spectral_norm"] = draw(st.booleans())
        make_g, make_d = lambda: DCGANGenerator(**g), lambda: DCGANDiscriminator(**d)
    loss = draw(st.sampled_from(["non_saturating", "hinge", "wasserstein"]))
    per_batch = d.get("batch_norm", False)
    kwargs = dict(
        sample_shape=(C, H, H),
        num_classes=classes,
        loss=loss,
        # per-example penalties: batch norm in the discriminator mixes the examples
        gradient_penalty=_mostly(draw, 0.0 if per_batch else draw(st.sampled_from([0.0, 10.0])), [10.0]),
        r1_gamma=_mostly(draw, 0.0 if per_batch else draw(st.sampled_from([0.0, 1.0])), [1.0]),
        n_critic=draw(st.integers(1, 3)),
        lr_decay=draw(st.sampled_from(["none", "linear"])),
        decay_steps=draw(st.sampled_from([None, 5])),
        clip_norm_g=draw(st.sampled_from([None, 1.0])),
        clip_norm_d=draw(st.sampled_from([None, 1.0])),
    )
    sampling = GANSampling(truncation=draw(st.sampled_from([None, 0.5, 2.0])))
    return lambda: GAN(make_g(), make_d(), **kwargs, sampling=sampling), (x, y)


def _vae(draw: Draw) -> Case:
    x, y = _image_batch(draw, sizes=(4, 7, 8, 28))
    C, H = x.shape[1], x.shape[2]
    classes = _classes(draw)
    latent = draw(st.integers(1, 6))
    hidden = draw(st.lists(st.sampled_from([4, 8, 16]), min_size=1, max_size=2))
    activation = draw(st.sampled_from(["tanh", "relu"]))
    enc = dict(
        in_channels=_mostly(draw, C, [1, 3]),
        image_size=_mostly(draw, H, [8, 28]),
        hidden=hidden,
        latent_dim=latent,
        activation=activation,
        num_classes=_mostly(draw, classes, [0, 2]),
    )
    dec = {**enc, "latent_dim": _mostly(draw, latent, [2, 7])}
    dec["out_channels"] = dec.pop("in_channels")
    likelihood = draw(st.sampled_from(["bernoulli", "gaussian", "logistic"]))
    kwargs = dict(
        sample_shape=(C, H, H),
        num_classes=classes,
        likelihood=likelihood,
        gaussian_std=_mostly(draw, 0.1 if likelihood == "gaussian" else None, [None, 0.1]),
        binarization=_mostly(
            draw, draw(st.sampled_from([None, "dynamic"])) if likelihood == "bernoulli" else None, ["static"]
        ),
        beta=draw(st.sampled_from([0.0, 1.0, 4.0])),
        kl_warmup_steps=draw(st.sampled_from([0, 10])),
        train_samples=draw(st.integers(1, 3)),
        objective=(objective := draw(st.sampled_from(["elbo", "iwae"]))),
        free_bits=_mostly(draw, draw(st.sampled_from([0.0, 0.5])) if objective == "elbo" else 0.0, [0.5]),
        adversarial_eps=draw(st.sampled_from([0.0, 0.1])),
        adversarial_norm=draw(st.sampled_from(["linf", "l2"])),
        adversarial_steps=draw(st.integers(1, 2)),
    )
    sampling = VAESampling(mean=draw(st.booleans()), temperature=draw(st.sampled_from([0.5, 1.0])))
    return lambda: VAE(MLPEncoder(**enc), MLPDecoder(**dec), **kwargs, sampling=sampling), (x, y)


def _token_batch(draw: Draw, vocab: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (B, N) below ``vocab``, labels (B,) below K): a sequence batch."""
    B = draw(st.integers(1, 4))
    return torch.randint(0, vocab, (B, length)), torch.randint(0, K, (B,))


def _next_token(draw: Draw) -> Case:
    net = draw(st.sampled_from(["gpt", "pixelcnn", "wavenet"]))
    classes = _classes(draw)
    if net == "gpt":
        vocab, block = draw(st.integers(2, len(TEXT))), draw(st.integers(2, 12))
        batch = _token_batch(draw, vocab, block + 1)  # x = tokens[:, :-1], targets tokens[:, 1:]
        make_net = _gpt(draw, vocab, block, classes, causal=True)
        data = dict(vocabulary=TEXT[:vocab], modality="text")
        prompt = draw(st.sampled_from([None, "a", "ab"]))
    elif net == "pixelcnn":
        C, H = draw(st.sampled_from([1, 3])), draw(st.integers(2, 5))
        levels, block = draw(st.sampled_from([2, 4, 256])), C * H * H
        vocab = levels
        batch = _token_batch(draw, vocab, block)  # the net scores every token (target_offset 0)
        kwargs = dict(
            image_shape=_mostly(draw, (C, H, H), [(1, 4, 4), (3, H, H)]),
            levels=_mostly(draw, levels, [2, 256]),
            input=_mostly(
                draw,
                "intensity" if C > 1 else draw(st.sampled_from(["intensity", "embedding"])),
                ["embedding"],
            ),
            hidden=_mostly(draw, C * draw(st.sampled_from([1, 2, 4])), [2, 4]),
            n_layers=draw(st.integers(1, 3)),
            kernel_size=_mostly(draw, draw(st.sampled_from([1, 3, 5])), [2]),
            first_kernel_size=_mostly(draw, draw(st.sampled_from([1, 3, 7])), [2]),
            output_hidden=draw(st.sampled_from([4, 8])),
            num_classes=_mostly(draw, classes, [0, 2]),
        )
        make_net = lambda: GatedPixelCNN(**kwargs)  # noqa: E731 -- one of three factories
        data, prompt = dict(modality="image"), None
    else:
        vocab, block = 256, draw(st.integers(2, 24))
        batch = _token_batch(draw, vocab, block + 1)
        kwargs = dict(
            levels=_mostly(draw, vocab, [16]),
            residual_channels=draw(st.sampled_from([2, 4])),
            gate_channels=draw(st.sampled_from([2, 4, 8])),
            skip_channels=draw(st.sampled_from([2, 8])),
            kernel_size=_mostly(draw, draw(st.sampled_from([2, 3])), [1]),
            layers_per_stack=draw(st.integers(1, 4)),
            stacks=draw(st.integers(1, 2)),
            num_classes=_mostly(draw, classes, [0, 2]),
            block_size=draw(st.sampled_from([None, block, 8])),
        )
        make_net = lambda: WaveNet(**kwargs)  # noqa: E731
        data, prompt = dict(modality="audio"), draw(st.sampled_from([None, "128"]))
    sampling = NextTokenSampling(
        max_new_tokens=draw(st.integers(1, 4)),
        temperature=draw(st.sampled_from([0.5, 1.0])),
        top_k=draw(st.sampled_from([None, 1, 3, 1000])),
        top_p=draw(st.sampled_from([None, 0.5, 1.0])),
        prompt=prompt,
    )
    kwargs_m = dict(
        vocab_size=vocab,
        block_size=block,
        num_classes=classes,
        p_uncond=draw(st.sampled_from([0.0, 0.1])),
        warmup_steps=draw(st.sampled_from([0, 3])),
        lr_decay_steps=draw(st.sampled_from([None, 5])),
        **data,
    )
    return lambda: NextToken(make_net(), **kwargs_m, sampling=sampling), batch


def _masked(draw: Draw) -> Case:
    text = draw(st.booleans())
    vocab, block = draw(st.integers(2, len(TEXT))), draw(st.integers(2, 12))
    classes = _classes(draw)
    batch = _token_batch(draw, vocab, block)
    make_net = _gpt(draw, vocab + 1, block, classes, causal=False)  # + 1 for [MASK]
    data = dict(vocabulary=TEXT[:vocab], modality="text") if text else dict(modality="image")
    sampling = MaskedSampling(
        steps=draw(st.integers(1, 4)),
        choice_temperature=draw(st.sampled_from([0.0, 4.5])),
        temperature=draw(st.sampled_from([0.5, 1.0])),
        top_k=draw(st.sampled_from([None, 1, 3])),
        guidance=_mostly(draw, draw(st.sampled_from([0.0, 1.0])) if classes else 0.0, [1.0]),
        prompt=draw(st.sampled_from([None, "a_b"])) if text else None,
    )
    kwargs = dict(
        vocab_size=vocab,
        block_size=block,
        num_classes=classes,
        schedule=draw(st.sampled_from(["cosine", "linear", "square", "cubic", "sqrt", "log", "exp"])),
        label_smoothing=draw(st.sampled_from([0.0, 0.1])),
        p_uncond=draw(st.sampled_from([0.0, 0.1])),
        warmup_steps=draw(st.sampled_from([0, 3])),
        **data,
    )
    return lambda: MaskedTokens(make_net(), **kwargs, sampling=sampling), batch


def _conv_autoencoder(draw: Draw, channels: int, size: int) -> tuple[dict, dict]:
    """The shared init arguments of ``Encoder`` and ``Decoder``: (encoder's, decoder's)."""
    common = dict(
        image_size=_mostly(draw, size, [8, 16]),
        base_channels=draw(st.sampled_from([2, 4, 8])),
        channel_mult=draw(st.lists(st.sampled_from([1, 2]), min_size=1, max_size=2)),
        num_res_blocks=draw(st.integers(1, 2)),
        latent_channels=draw(st.sampled_from([1, 2, 4])),
        norm=draw(st.sampled_from(["group", "batch", "none"])),
        activation=draw(st.sampled_from(["silu", "relu"])),
        num_groups=draw(st.sampled_from([1, 2, 4])),
    )
    channels = _mostly(draw, channels, [1, 3])
    return {**common, "in_channels": channels}, {**common, "out_channels": channels}


def _kl_autoencoder(draw: Draw) -> Case:
    x, y = _image_batch(draw, sizes=(4, 6, 8, 16))
    C, H = x.shape[1], x.shape[2]
    enc, dec = _conv_autoencoder(draw, C, H)
    enc["double_latent"] = _mostly(draw, True, [False])
    kwargs = dict(
        sample_shape=(C, H, H),
        kl_weight=draw(st.sampled_from([0.0, 1e-6, 1.0])),
        rec_loss=draw(st.sampled_from(["l1", "mse"])),
        scale_factor=draw(st.sampled_from([None, 1.0])),
        scale_batches=draw(st.integers(1, 2)),
    )
    return lambda: KLAutoencoder(Encoder(**enc), Decoder(**dec), **kwargs), (x, y)


def _vqvae(draw: Draw) -> Case:
    x, y = _image_batch(draw, sizes=(4, 6, 8, 16))
    C, H = x.shape[1], x.shape[2]
    enc, dec = _conv_autoencoder(draw, C, H)
    quantizer = dict(
        num_codes=draw(st.sampled_from([1, 2, 8])),
        code_dim=_mostly(draw, enc["latent_channels"], [3]),
        commitment=draw(st.sampled_from([0.0, 0.25])),
        ema=draw(st.booleans()),
        decay=draw(st.sampled_from([0.0, 0.99])),
        dead_code_threshold=draw(st.sampled_from([0.0, 1.0])),
    )
    make = lambda: VQVAE(  # noqa: E731
        Encoder(**enc), Decoder(**dec), VectorQuantizer(**quantizer), sample_shape=(C, H, H)
    )
    return make, (x, y)


PARADIGMS: dict[str, Callable[..., Case]] = {  # (draw) -> Case; the latent row takes the autoencoder too
    "diffusion": _diffusion,
    "latent-diffusion": _latent_diffusion,
    "edm": _edm,
    "flow": _flow,
    "gan": _gan,
    "vae": _vae,
    "next-token": _next_token,
    "masked-tokens": _masked,
    "kl-autoencoder": _kl_autoencoder,
    "vqvae": _vqvae,
}


# ---------------------------------------------------------------------- the property


def _trains_a_step_or_is_one_clear_error(case: Case, root) -> str:
    """Build, fit one step, sample twice; 'trained' or 'config error'. Anything else raises."""
    build, batch = case
    torch.manual_seed(0)  # the same example gives the same outcome (hypothesis replays it to shrink)
    try:
        module = build()
        trainer = quiet_trainer(root, max_steps=1, limit_val_batches=0, accelerator="cpu")
        trainer.fit(module, train_dataloaders=DataLoader([batch], batch_size=None))
        samples = None
        if hasattr(module, "sample"):  # the generative modules; autoencoders encode and decode only
            samples = module.sample(2, generator=torch.Generator().manual_seed(0))
    except LitGenAIError as error:
        message = str(error).strip()
        assert message and "\n" not in message, f"a configuration error of several lines: {message!r}"
        return "config error"
    assert trainer.global_step >= 1, "no optimiser step was taken"
    for name, parameter in module.named_parameters():
        assert torch.isfinite(parameter).all(), f"{name} is not finite after one step"
    if samples is not None:
        assert len(samples) == 2
    return "trained"


def _check(paradigm: str, data: st.DataObject, request: pytest.FixtureRequest) -> None:
    root = request.getfixturevalue("tmp_path_factory").getbasetemp()
    if paradigm == "latent-diffusion":  # the session's autoencoder, fitted once (conftest.py)
        case = PARADIGMS[paradigm](data.draw, str(request.getfixturevalue("ae_checkpoint")))
    else:
        case = PARADIGMS[paradigm](data.draw)
    # pytest --hypothesis-show-statistics: how often each outcome was drawn
    event(_trains_a_step_or_is_one_clear_error(case, root))


@pytest.mark.parametrize("paradigm", list(PARADIGMS))
@FAST
@given(data=st.data())
def test_a_random_configuration_trains_a_step_or_is_one_clear_error(paradigm, data, request):
    _check(paradigm, data, request)


@pytest.mark.slow
@pytest.mark.parametrize("paradigm", list(PARADIGMS))
@THOROUGH
@given(data=st.data())
def test_many_random_configurations_train_a_step_or_are_one_clear_error(paradigm, data, request):
    _check(paradigm, data, request)
