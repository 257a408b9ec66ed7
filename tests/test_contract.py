"""The contracts of docs/architecture.md, checked once for every module an experiment uses.

One row per (module, network) combination that an ``experiments/*.yaml`` file uses, at tiny sizes
(``GENERATIVE``), and one per autoencoder (``AUTOENCODERS``). Each generative row is checked for:
the ``GenerativeModule`` protocol; every sampling setting accepted as a ``sample()`` keyword and
changing nothing when given its current value; one clear error for an unknown option; a batch equal
to the same samples drawn one by one from the same per-sample seeds; ``sampling_settings()`` round
trips through the evaluation protocol; ``predict`` writing files through the medium's route;
``ema_target`` naming a submodule; ``cond={"label": ...}`` and a bare tensor giving the same samples.
``test_every_experiment_has_a_row`` fails when an experiment uses a combination without a row: a new
paradigm joins by adding one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml
from helpers import quiet_trainer
from torch import Tensor

from lit_genai import paradigm
from lit_genai.ar import NextToken, NextTokenSampling
from lit_genai.ar.pretrained import PretrainedGPT2
from lit_genai.callbacks import SampleWriter
from lit_genai.callbacks.evaluation import Evaluation
from lit_genai.conditions import check_conditions
from lit_genai.diffusion import EDM, Diffusion, DiffusionSampling, EDMSampling, FlowMatching, FlowSampling
from lit_genai.errors import ConfigError
from lit_genai.gan import GAN
from lit_genai.masked import MaskedSampling, MaskedTokens
from lit_genai.media import Waveforms, to_uint8
from lit_genai.nn import UNet
from lit_genai.nn.autoencoder import Decoder, Encoder
from lit_genai.nn.cyclegan import CycleGANGenerator
from lit_genai.nn.dcgan import DCGANDiscriminator, DCGANGenerator
from lit_genai.nn.dit import DiT
from lit_genai.nn.lora import LoRAConfig
from lit_genai.nn.pix2pix import PatchDiscriminator, UNetGenerator
from lit_genai.nn.pixelcnn import GatedPixelCNN
from lit_genai.nn.sngan import ResNetDiscriminator, ResNetGenerator
from lit_genai.nn.text_encoder import TextEncoder
from lit_genai.nn.transformer import GPT
from lit_genai.nn.vae import MLPDecoder, MLPEncoder
from lit_genai.nn.vq import VectorQuantizer
from lit_genai.nn.wavenet import WaveNet
from lit_genai.translation import CycleGAN, Pix2Pix
from lit_genai.vae import VAE, VQVAE
from lit_genai.vae.autoencoder import KLAutoencoder

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
K = 3  # classes of the conditional rows
TEXT = list("abcdefghij")  # the toy vocabulary of the text rows (V = 10)
WORDS = ["a", "red", "blue", "circle", "square"]  # the caption words of the text-to-image rows
CAPTIONS = ["a red circle", "blue square", "a blue circle"]


class Decoding(L.LightningDataModule):
    """What ``predict`` needs of a data module: sample indices and ``decode`` to the medium."""

    def __init__(self, decode: Callable[[Tensor], Any], n: int = 4) -> None:
        super().__init__()
        self._decode, self.n = decode, n

    def decode(self, samples: Tensor) -> Any:
        return self._decode(samples)

    def predict_dataloader(self):
        return torch.utils.data.DataLoader(torch.arange(self.n), batch_size=2)


def _images(samples: Tensor) -> Tensor:
    return to_uint8(samples)


def _text(ids: Tensor) -> list[str]:
    return ["".join(TEXT[i] for i in row) for row in ids.tolist()]


def _pixels(shape: tuple[int, ...], levels: int) -> Callable[[Tensor], Tensor]:
    def decode(ids: Tensor) -> Tensor:  # (n, C*H*W) raster order, channels innermost -> (n, C, H, W)
        C, H, W = shape
        return (ids.view(-1, H, W, C).permute(0, 3, 1, 2) * (255 // (levels - 1))).to(torch.uint8)

    return decode


def _audio(ids: Tensor) -> Waveforms:
    return Waveforms(ids.float() / 127.5 - 1, sample_rate=4000)


def _unet(channels: int = 1, classes: int = K) -> UNet:
    return UNet(
        in_channels=channels,
        base_channels=8,
        channel_mult=(1,),
        num_res_blocks=1,
        attention_levels=(),
        dropout=0.0,
        num_groups=4,
        num_classes=classes,
    )


def _dit(channels: int = 1, size: int = 8, patch: int = 4, text: bool = False) -> DiT:
    return DiT(
        in_channels=channels,
        image_size=size,
        patch_size=patch,
        hidden_size=16,
        depth=1,
        num_heads=2,
        num_classes=0 if text else K,
        num_timesteps=30,
        text_encoder=_caption_encoder() if text else None,
    )


def _gpt(vocab: int, block: int, causal: bool = True, classes: int = 0) -> GPT:
    return GPT(
        vocab_size=vocab, block_size=block, n_layer=1, n_head=2, n_embd=16, causal=causal, num_classes=classes
    )


@functools.cache
def _gpt2_folder() -> str:
    """A Hugging Face GPT-2 folder (config.json, pytorch_model.bin) of a tiny random GPT-2 of the
    text rows' vocabulary, written once per process: what ``PretrainedGPT2`` starts from."""
    from lit_genai.export.huggingface import gpt2_config, gpt2_state_dict

    folder = Path(tempfile.mkdtemp(prefix="lit-genai-gpt2-"))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = GPT(
            vocab_size=10, block_size=16, n_layer=1, n_head=2, n_embd=16, bias=True, activation="gelu_tanh"
        )
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", **gpt2_config(net)}))
    torch.save(gpt2_state_dict(net), folder / "pytorch_model.bin")
    return str(folder)


def _caption_encoder() -> TextEncoder:
    return TextEncoder(vocab_size=len(WORDS) + 1, max_length=4, n_layer=1, n_head=2, n_embd=8)


def _text_unet() -> UNet:
    return UNet(
        in_channels=1,
        base_channels=8,
        channel_mult=(1,),
        num_res_blocks=1,
        attention_levels=(),
        dropout=0.0,
        num_groups=4,
        text_encoder=_caption_encoder(),
        cross_attention_levels=(0,),
        cross_attention_heads=2,
    )


def _diffusion(net, **kwargs) -> Diffusion:
    options = dict(sample_shape=(1, 8, 8), num_classes=K, num_timesteps=30, beta_schedule="cosine")
    return Diffusion(net, **{**options, **kwargs}, sampling=DiffusionSampling(steps=3, guidance_scale=1.0))


# Each row: (the experiment combination it stands for, a factory of (module, data for predict)).
# The key is (module class, the network classes, latent?) as the experiments' YAML files name them.
GENERATIVE: dict[str, tuple[tuple[str, tuple[str, ...], bool], Callable[[Path], tuple[Any, Decoding]]]] = {
    "diffusion-unet": (
        ("Diffusion", ("UNet",), False),
        lambda ae: (_diffusion(_unet()), Decoding(_images)),
    ),
    "diffusion-dit": (
        ("Diffusion", ("DiT",), False),
        lambda ae: (_diffusion(_dit()), Decoding(_images)),
    ),
    "text2image-diffusion-unet": (
        ("Diffusion", ("TextEncoder", "UNet"), False),
        lambda ae: (
            Diffusion(
                _text_unet(),
                sample_shape=(1, 8, 8),
                num_timesteps=30,
                beta_schedule="cosine",
                text_vocabulary=WORDS,
                sampling=DiffusionSampling(steps=3, guidance_scale=1.0, prompt=CAPTIONS[:2]),
            ),
            Decoding(_images),
        ),
    ),
    "latent-diffusion-unet": (
        ("Diffusion", ("UNet",), True),
        lambda ae: (
            Diffusion(
                _unet(channels=2),
                sample_shape=(1, 28, 28),
                num_classes=K,
                num_timesteps=30,
                beta_schedule="cosine",
                autoencoder=str(ae),
                sampling=DiffusionSampling(sampler="dpm_solver++", steps=2, guidance_scale=1.0),
            ),
            Decoding(_images),
        ),
    ),
    "latent-diffusion-dit": (
        ("Diffusion", ("DiT",), True),
        lambda ae: (
            Diffusion(
                _dit(channels=2, size=7, patch=1),
                sample_shape=(1, 28, 28),
                num_classes=K,
                num_timesteps=30,
                beta_schedule="cosine",
                autoencoder=str(ae),
                sampling=DiffusionSampling(steps=2),
            ),
            Decoding(_images),
        ),
    ),
    "text2image-latent-diffusion-dit": (
        ("Diffusion", ("DiT", "TextEncoder"), True),
        lambda ae: (
            Diffusion(
                _dit(channels=2, size=7, patch=1, text=True),
                sample_shape=(1, 28, 28),
                num_timesteps=30,
                beta_schedule="cosine",
                autoencoder=str(ae),
                text_vocabulary=WORDS,
                sampling=DiffusionSampling(sampler="dpm_solver++", steps=2, prompt=CAPTIONS[:2]),
            ),
            Decoding(_images),
        ),
    ),
    "edm-unet": (
        ("EDM", ("UNet",), False),
        lambda ae: (
            EDM(
                _unet(),
                sample_shape=(1, 8, 8),
                num_classes=K,
                sampling=EDMSampling(steps=2, guidance_scale=1.0),
            ),
            Decoding(_images),
        ),
    ),
    "flow-unet": (
        ("FlowMatching", ("UNet",), False),
        lambda ae: (
            FlowMatching(_unet(), sample_shape=(1, 8, 8), num_classes=K, sampling=FlowSampling(steps=2)),
            Decoding(_images),
        ),
    ),
    "gan-dcgan": (
        ("GAN", ("DCGANDiscriminator", "DCGANGenerator"), False),
        lambda ae: (
            GAN(
                DCGANGenerator(latent_dim=8, out_channels=1, image_size=28, base_channels=4, num_classes=K),
                DCGANDiscriminator(in_channels=1, image_size=28, base_channels=4, num_classes=K),
                sample_shape=(1, 28, 28),
                num_classes=K,
            ),
            Decoding(_images),
        ),
    ),
    "gan-resnet": (
        ("GAN", ("ResNetDiscriminator", "ResNetGenerator"), False),
        lambda ae: (
            GAN(
                ResNetGenerator(latent_dim=8, out_channels=3, image_size=32, base_channels=8),
                ResNetDiscriminator(in_channels=3, image_size=32, base_channels=8),
                sample_shape=(3, 32, 32),
            ),
            Decoding(_images),
        ),
    ),
    "gan-pix2pix": (  # image-to-image: sample() translates stored example sources (translation/base.py)
        ("Pix2Pix", ("PatchDiscriminator", "UNetGenerator"), False),
        lambda ae: (
            Pix2Pix(
                UNetGenerator(1, 1, 28, base_channels=4),
                PatchDiscriminator(1, source_channels=1, image_size=28, base_channels=4),
                source_shape=(1, 28, 28),
                sample_shape=(1, 28, 28),
                num_examples=4,
            ),
            Decoding(_images),
        ),
    ),
    "gan-cyclegan": (
        (
            "CycleGAN",
            ("CycleGANGenerator", "CycleGANGenerator", "PatchDiscriminator", "PatchDiscriminator"),
            False,
        ),
        lambda ae: (
            CycleGAN(
                CycleGANGenerator(1, 1, 8, base_channels=4, n_blocks=1),
                CycleGANGenerator(1, 1, 8, base_channels=4, n_blocks=1),
                PatchDiscriminator(1, image_size=8, base_channels=4, norm="instance"),
                PatchDiscriminator(1, image_size=8, base_channels=4, norm="instance"),
                source_shape=(1, 8, 8),
                sample_shape=(1, 8, 8),
                pool_size=3,  # full after two batches: resumes must restore the pools (test_resume.py)
                num_examples=4,
            ),
            Decoding(_images),
        ),
    ),
    "vae-mlp": (
        ("VAE", ("MLPDecoder", "MLPEncoder"), False),
        lambda ae: (
            VAE(
                MLPEncoder(hidden=(16,), latent_dim=4),
                MLPDecoder(hidden=(16,), latent_dim=4),
                sample_shape=(1, 28, 28),
                binarization="dynamic",
            ),
            Decoding(_images),
        ),
    ),
    "gpt-text": (
        ("NextToken", ("GPT",), False),
        lambda ae: (
            NextToken(
                _gpt(10, 16, classes=K),
                vocab_size=10,
                block_size=16,
                num_classes=K,
                vocabulary=TEXT,
                sampling=NextTokenSampling(max_new_tokens=5, prompt="ab"),
            ),
            Decoding(_text),
        ),
    ),
    "gpt-text-lora": (  # fine-tuning with low-rank adapters (nn/lora.py): the base GPT frozen
        ("NextToken", ("GPT",), False),
        lambda ae: (
            NextToken(
                _gpt(10, 16, classes=K),
                vocab_size=10,
                block_size=16,
                num_classes=K,
                vocabulary=TEXT,
                sampling=NextTokenSampling(max_new_tokens=5, prompt="ab"),
                lora=LoRAConfig(rank=2, alpha=4.0, targets=("c_attn", "c_fc")),
            ),
            Decoding(_text),
        ),
    ),
    "gpt2-chat-lora": (  # GPT-2 weights from a local folder, LoRA, a prompt template (responses)
        ("NextToken", ("PretrainedGPT2",), False),
        lambda ae: (
            NextToken(
                PretrainedGPT2(_gpt2_folder()),
                vocab_size=10,
                block_size=16,
                vocabulary=TEXT,
                sampling=NextTokenSampling(max_new_tokens=5, prompt="ab"),
                lora=LoRAConfig(rank=2, alpha=4.0),
                prompt_template={"prefix": "", "roles": {"user": "{content}j", "assistant": "{content}j"}},
            ),
            Decoding(_text),
        ),
    ),
    "pixelcnn-pixels": (
        ("NextToken", ("GatedPixelCNN",), False),
        lambda ae: (
            NextToken(
                GatedPixelCNN(
                    image_shape=(1, 4, 4), levels=2, hidden=8, n_layers=2, output_hidden=8, num_classes=K
                ),
                vocab_size=2,
                block_size=16,
                num_classes=K,
                modality="image",
            ),
            Decoding(_pixels((1, 4, 4), 2)),
        ),
    ),
    "wavenet-audio": (
        ("NextToken", ("WaveNet",), False),
        lambda ae: (
            NextToken(
                WaveNet(
                    residual_channels=4,
                    gate_channels=8,
                    skip_channels=8,
                    layers_per_stack=3,
                    stacks=1,
                    num_classes=K,
                    block_size=32,
                ),
                vocab_size=256,
                block_size=32,
                num_classes=K,
                modality="audio",
                sampling=NextTokenSampling(max_new_tokens=6, prompt="128"),
            ),
            Decoding(_audio),
        ),
    ),
    "maskgit-image-tokens": (
        ("MaskedTokens", ("GPT",), False),
        lambda ae: (
            MaskedTokens(
                _gpt(9, 4, causal=False, classes=K),
                vocab_size=8,
                block_size=4,
                num_classes=K,
                modality="image",
                sampling=MaskedSampling(steps=2, guidance=1.0),
            ),
            Decoding(_pixels((1, 2, 2), 8)),
        ),
    ),
    "text2image-maskgit": (
        ("MaskedTokens", ("GPT", "TextEncoder"), False),
        lambda ae: (
            MaskedTokens(
                GPT(
                    vocab_size=9,
                    block_size=4,
                    n_layer=1,
                    n_head=2,
                    n_embd=16,
                    causal=False,
                    text_encoder=_caption_encoder(),
                ),
                vocab_size=8,
                block_size=4,
                modality="image",
                text_vocabulary=WORDS,
                sampling=MaskedSampling(steps=2, guidance=1.0, caption=CAPTIONS[:2]),
            ),
            Decoding(_pixels((1, 2, 2), 8)),
        ),
    ),
    "masked-text": (
        ("MaskedTokens", ("GPT",), False),
        lambda ae: (
            MaskedTokens(
                _gpt(11, 12, causal=False),
                vocab_size=10,
                block_size=12,
                vocabulary=TEXT,
                modality="text",
                sampling=MaskedSampling(steps=3, prompt="ab__c"),
            ),
            Decoding(_text),
        ),
    ),
}


def _kl() -> KLAutoencoder:
    common = dict(image_size=8, base_channels=4, channel_mult=(1, 2), num_res_blocks=1, latent_channels=2)
    return KLAutoencoder(
        Encoder(in_channels=1, double_latent=True, num_groups=2, **common),
        Decoder(out_channels=1, num_groups=2, **common),
        sample_shape=(1, 8, 8),
        scale_factor=1.0,
    )


def _vq() -> VQVAE:
    common = dict(image_size=8, base_channels=4, channel_mult=(1, 2), num_res_blocks=1, latent_channels=4)
    return VQVAE(
        Encoder(in_channels=1, num_groups=2, **common),
        Decoder(out_channels=1, num_groups=2, **common),
        VectorQuantizer(num_codes=8, code_dim=4),
        sample_shape=(1, 8, 8),
    )


AUTOENCODERS: dict[str, tuple[tuple[str, tuple[str, ...], bool], Callable[[], Any]]] = {
    "kl-autoencoder": (("KLAutoencoder", ("Decoder", "Encoder"), False), _kl),
    "vqvae": (("VQVAE", ("Decoder", "Encoder", "VectorQuantizer"), False), _vq),
    "vae": (
        ("VAE", ("MLPDecoder", "MLPEncoder"), False),
        lambda: VAE(
            MLPEncoder(image_size=8, hidden=(8,), latent_dim=3),
            MLPDecoder(image_size=8, hidden=(8,), latent_dim=3),
            sample_shape=(1, 8, 8),
        ),
    ),
}


@pytest.fixture(params=list(GENERATIVE))
def case(request, ae_checkpoint) -> tuple[Any, Decoding]:
    torch.manual_seed(0)
    return GENERATIVE[request.param][1](ae_checkpoint)


def _seeds(indices) -> list[torch.Generator]:
    return paradigm.sample_generators(7, indices)


def _labels(module: Any, n: int) -> dict[str, Any]:
    """``cond`` for n samples: labels cycling over the classes of a conditional module, captions
    cycling over ``CAPTIONS`` for a text-conditional one, else none."""
    cond: dict[str, Any] = {}
    if module.num_classes > 0:
        cond["label"] = torch.arange(n) % module.num_classes
    if "text" in module.conditions:
        cond["text"] = [CAPTIONS[i % len(CAPTIONS)] for i in range(n)]
    if list(cond) == ["label"]:
        return {"cond": cond["label"]}  # the bare tensor, as code written for labels passes it
    return {"cond": cond} if cond else {}


def _row(cond: dict[str, Any], i: int) -> dict[str, Any]:
    """The ``cond`` of ``_labels`` for sample i alone."""
    if not cond:
        return {}
    value = cond["cond"]
    if isinstance(value, Tensor):
        return {"cond": value[i : i + 1]}
    return {"cond": {name: v[i : i + 1] for name, v in value.items()}}


def _same(a: Tensor, b: Tensor) -> None:
    if a.is_floating_point():
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # batched matmuls round differently
    else:
        assert torch.equal(a, b)


# ---------------------------------------------------------------------- generative modules


def test_keeps_the_protocol(case):
    module, _ = case
    assert isinstance(module, paradigm.GenerativeModule)
    assert paradigm.is_generative(module)
    assert isinstance(module.sampling, paradigm.SamplingSettings)
    assert dataclasses.is_dataclass(module.sampling)
    assert set(module.conditions) <= {"label", "mels", "text", "image"}
    assert ("label" in module.conditions) == (module.num_classes > 0)
    assert "sampling" not in module.hparams  # the command line's settings are never overridden


def test_every_setting_is_a_sample_keyword_that_changes_nothing_at_its_value(case):
    module, _ = case
    cond = _labels(module, 2)
    reference = module.sample(2, generator=_seeds(range(2)), **cond)
    for name in module.sampling.names():
        again = module.sample(2, generator=_seeds(range(2)), **cond, **{name: getattr(module.sampling, name)})
        _same(again, reference)


def test_an_unknown_option_is_one_clear_error(case):
    module, _ = case
    with pytest.raises(ConfigError, match=r"unknown sampling option\(s\) stepz .*the options are: ") as error:
        module.sample(1, stepz=3)
    assert "\n" not in str(error.value)
    for name in module.sampling.names():  # the message lists the allowed names
        assert name in str(error.value)


def test_a_batch_equals_the_same_samples_drawn_one_by_one(case):
    module, _ = case
    n = 3
    cond = _labels(module, n)
    batch = module.sample(n, generator=_seeds(range(n)), **cond)
    for i in range(n):
        _same(module.sample(1, generator=_seeds([i]), **_row(cond, i)), batch[i : i + 1])


def test_sampling_settings_round_trip_through_the_evaluation_protocol(case):
    module, _ = case
    settings = module.sampling_settings()
    assert list(settings) == list(module.sampling.names())
    assert type(module.sampling)(**settings) == module.sampling
    name = module.sampling.names()[0]
    value = getattr(module.sampling, name)
    callback = Evaluation(sampling={name: value})
    protocol = callback._sampler_settings(quiet_trainer(".", logger=False), module)
    recorded = json.loads(json.dumps(protocol))  # as the test JSON and W&B store it
    assert {k: v for k, v in recorded.items() if k not in ("seed", "ema")} == json.loads(json.dumps(settings))
    assert recorded["seed"] == callback.seed and recorded["ema"] is False


def test_predict_writes_files_through_the_mediums_route(case, tmp_path):
    module, data = case
    writer = SampleWriter(output_dir=str(tmp_path))
    quiet_trainer(tmp_path, callbacks=[writer], accelerator="cpu").predict(module, datamodule=data)
    suffix = {"image": ".png", "text": ".txt", "audio": ".wav"}[module.modality]
    names = sorted(p.name for p in tmp_path.iterdir())
    for i in range(data.n):
        assert f"sample_{i:05d}{suffix}" in names
    prompts = paradigm.predict_prompts(module, range(data.n))
    if prompts is not None:  # a text-conditional model says which caption made which file
        lines = (tmp_path / "prompts.txt").read_text().splitlines()
        assert lines == [f"sample_{i:05d}{suffix}\t{p}" for i, p in enumerate(prompts)]


def test_ema_target_names_a_submodule(case):
    module, _ = case
    target = module.ema_target
    if target is None:  # the whole module
        return
    assert isinstance(getattr(module, target), torch.nn.Module)
    assert dict(module.named_children())[target] is getattr(module, target)


def test_a_label_mapping_and_a_bare_tensor_give_the_same_samples(case):
    module, _ = case
    labels = torch.arange(2) % max(module.num_classes, 1)
    if module.num_classes == 0:  # an unconditional model refuses labels in both forms
        for cond in ({"label": labels}, labels):
            with pytest.raises(ConfigError, match="condition"):
                module.sample(2, cond=cond)
        return
    a = module.sample(2, cond={"label": labels}, generator=_seeds(range(2)))
    b = module.sample(2, cond=labels, generator=_seeds(range(2)))
    assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="unknown condition\\(s\\) colour"):
        module.sample(2, cond={"label": labels, "colour": labels})


def test_conditions_are_compared_with_the_data(case):
    module, _ = case

    class Data(L.LightningDataModule):
        def __init__(self, num_classes: int, text: bool = False, image: bool = False) -> None:
            super().__init__()
            self.num_classes = num_classes
            if text:
                self.conditions = ("label", "text") if num_classes else ("text",)
            if image:  # image-to-image data: the source image
                self.conditions = ("image", "label") if num_classes else ("image",)

    image = "image" in module.conditions
    check_conditions(module, Data(module.num_classes, "text" in module.conditions, image))  # fine
    if "text" in module.conditions:
        with pytest.raises(ConfigError, match="conditioned on text but the data .* provides"):
            check_conditions(module, Data(module.num_classes))
    if module.num_classes > 0:
        with pytest.raises(ConfigError, match="conditioned on label but the data .* provides none"):
            check_conditions(module, Data(0))


# ---------------------------------------------------------------------- autoencoders


@pytest.mark.parametrize("name", list(AUTOENCODERS))
def test_autoencoders_keep_their_protocol(name):
    torch.manual_seed(0)
    module = AUTOENCODERS[name][1]()
    assert isinstance(module, paradigm.Autoencoder) and paradigm.is_autoencoder(module)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    module.eval()
    z = module.encode(x)
    assert tuple(z.shape) == (2, *module.latent_shape)
    assert (z.dtype == torch.long) == (module.latent_space == "discrete")
    images = module.decode(z)
    assert images.shape == x.shape and images.min() >= -1 and images.max() <= 1
    torch.testing.assert_close(module.reconstruct(x), images, rtol=1e-5, atol=1e-5)
    x.requires_grad_(True)
    loss = module.per_example_loss(x)  # (B,), differentiable in x: what attacks need
    assert loss.shape == (2,)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert grad.abs().sum() > 0


# ---------------------------------------------------------------------- coverage


def _combination(path: Path) -> tuple[str, tuple[str, ...], bool]:
    config = yaml.safe_load(path.read_text())
    model = config["model"]
    init_args = model.get("init_args", {})
    networks = [
        value
        for key, value in init_args.items()
        if isinstance(value, dict)
        and "class_path" in value
        and not key.startswith(("optimizer", "lr_scheduler"))
    ]
    encoders = [  # a network's text encoder makes another combination (a text-to-image model)
        net["init_args"]["text_encoder"]
        for net in networks
        if isinstance(net.get("init_args", {}).get("text_encoder"), dict)
    ]
    nets = tuple(sorted(value["class_path"].rsplit(".", 1)[-1] for value in networks + encoders))
    return model["class_path"].rsplit(".", 1)[-1], nets, bool(init_args.get("autoencoder"))


def test_every_experiment_has_a_row():
    rows = {key for key, _ in GENERATIVE.values()} | {key for key, _ in AUTOENCODERS.values()}
    missing = {}
    for path in sorted(EXPERIMENTS.glob("*/*.yaml")):
        key = _combination(path)
        if key[0] in ("Classifier", "AttributeTraining"):  # evaluation extractors, not generative models
            continue
        if key not in rows:
            missing[path.name] = key
    assert not missing, f"add a row to tests/test_contract.py for: {missing}"
