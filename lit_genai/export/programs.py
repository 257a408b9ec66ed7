"""Which part of a trained module is exported, with which inputs: the programs of ``lit-genai export``.

A program is a network that maps tensors to tensors on its own, in eval mode, with the input shapes
and dtypes written down, so that ``torch.export`` (and ONNX after it) can trace it with a dynamic batch
and a sampler can call it without lit_genai:

- ``denoiser`` (``Diffusion``, ``EDM``, ``FlowMatching``): the injected network itself,
  ``net(x (B, C, H, W), t (B,)[, y (B,)]) -> out (B, C, H, W)`` (``nn.UNet``, ``nn.DiT``); what ``t``
  and ``out`` mean, and the schedule a sampler needs, is in ``export.json`` (``manifest.py``). A
  latent model also exports its first stage's ``decoder`` (latents -> images).
- ``generator`` (``GAN``): ``z (B, Z)[, y (B,)] -> images (B, C, H, W)`` in [-1, 1], as ``sample``
  returns them for that z (clamped).
- ``decoder`` (``VAE``, ``KLAutoencoder``, ``VQVAE``): latents -> images in [-1, 1], as ``decode``.

A next-token model (GPT, WaveNet) exports its one-token decode step instead, with its static cache
(``decoding.py``, written by ``formats.save_decode_step``).

The decoders' few lines are copies of the modules' ``decode`` (marked ``Copied from``) so that a
program holds only the networks it runs: a wrapper holding the whole module would carry the encoder's
weights into the file. ``tests/test_export.py`` compares each with the module's own ``decode`` /
``sample``, so a change there that is not made here fails.

``networks`` names the networks whose weights ``--format safetensors`` writes (the inference ones:
a GAN's discriminator is left out) and ``network_configs`` their ``class_path`` + ``init_args``.

Shape legend: B batch (the dynamic dimension, ``BATCH``), C/H/W image, c/h/w latent, Z latent_dim,
D latent_dim of a VAE, K classes (label K: the null label of guidance), T diffusion steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from lit_genai.ar import NextToken
from lit_genai.diffusion import EDM, Diffusion
from lit_genai.diffusion.base import DenoisingModule
from lit_genai.errors import ConfigError
from lit_genai.gan import GAN
from lit_genai.masked import MaskedTokens
from lit_genai.pretrained import network_config
from lit_genai.vae import VAE, VQVAE, KLAutoencoder

BATCH = "batch"  # the name of the dynamic dimension in shapes, export.json and the ONNX graph


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a program.

    Args:
        name: The argument name (the ONNX input name too).
        shape: Sizes, ``BATCH`` for the dynamic first dimension.
        dtype: ``torch.float32`` or ``torch.int64``.
        description: What the values are, in one sentence, for ``export.json``.
        high: Integer inputs: values lie in [0, high) (random test inputs are drawn there); float
            inputs: the scale of random test inputs (normal, or uniform in [0, high) for times).
        uniform: Draw random float test inputs uniformly in [0, high) rather than N(0, 1).
    """

    name: str
    shape: tuple[Union[int, str], ...]
    dtype: torch.dtype
    description: str
    high: Optional[int] = None
    uniform: bool = False

    def example(self, batch: int, generator: torch.Generator) -> Tensor:
        """A random input of this spec with ``batch`` rows, drawn from ``generator``."""
        shape = tuple(batch if s == BATCH else int(s) for s in self.shape)
        if self.dtype == torch.int64:
            return torch.randint(0, int(self.high), shape, generator=generator)
        if self.uniform:
            return torch.rand(shape, generator=generator) * float(self.high)
        return torch.randn(shape, generator=generator)

    def as_json(self) -> dict[str, Any]:
        spec = {"name": self.name, "shape": list(self.shape), "dtype": str(self.dtype).removeprefix("torch.")}
        if self.dtype == torch.int64 and self.high is not None:
            spec["range"] = [0, int(self.high) - 1]
        return {**spec, "description": self.description}


@dataclass(frozen=True)
class Program:
    """A network to export: ``network(*inputs) -> output``, in eval mode, with its specs.

    Args:
        name: The file stem (``denoiser`` -> ``denoiser.pt2``) and its key in ``export.json``.
        network: The module traced, in eval mode; its forward takes the inputs in order.
        inputs: The specs of its positional inputs.
        output: The spec of its one output.
    """

    name: str
    network: nn.Module
    inputs: tuple[TensorSpec, ...]
    output: TensorSpec

    def example_inputs(self, batch: int, seed: int = 0) -> tuple[Tensor, ...]:
        """Random inputs with ``batch`` rows (the same for the same seed)."""
        generator = torch.Generator().manual_seed(seed)
        return tuple(spec.example(batch, generator) for spec in self.inputs)

    def as_json(self) -> dict[str, Any]:
        return {"inputs": [s.as_json() for s in self.inputs], "outputs": [self.output.as_json()]}


# ---------------------------------------------------------------------- the wrappers


class TextDenoiser(nn.Module):
    """A text-conditional denoiser with its text encoder, as ``sample()`` runs them:
    x, t, caption token ids (B, L) (0 = padding) -> the denoiser's output. The encoder runs inside,
    so the program takes what the tokenizer gives (``export.json``'s ``text`` says how to tokenize)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, t: Tensor, ids: Tensor) -> Tensor:
        return self.net(x, t, context=self.net.text_encoder(ids, ids != 0))


class LabelledTextDenoiser(TextDenoiser):
    """``TextDenoiser`` of a class- and text-conditional network: x, t, y, ids -> output."""

    def forward(self, x: Tensor, t: Tensor, y: Tensor, ids: Tensor) -> Tensor:  # type: ignore[override]
        return self.net(x, t, y, context=self.net.text_encoder(ids, ids != 0))


class Generator(nn.Module):
    """A GAN generator as ``GAN.sample`` uses it: z (B, Z)[, y (B,)] -> images (B, C, H, W) in [-1, 1]."""

    def __init__(self, net_g: nn.Module, conditional: bool) -> None:
        super().__init__()
        self.net_g, self.conditional = net_g, conditional

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        # Copied from GAN.sample: the generator, then the clamp to the data range.
        return self.net_g(z, y if self.conditional else None).clamp(-1, 1)  # (B, C, H, W)


class MeanImageDecoder(nn.Module):
    """A VAE's decoder as ``VAE.decode``: z (B, D)[, y (B,)] -> the mean image (B, C, H, W) in [-1, 1]."""

    def __init__(self, decoder: nn.Module, bernoulli: bool, conditional: bool) -> None:
        super().__init__()
        self.decoder, self.bernoulli, self.conditional = decoder, bernoulli, conditional

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        # Copied from VAE.decode (_decoder_output, _mean_image): Bernoulli logits -> 2 sigmoid - 1.
        out = self.decoder(z, y) if self.conditional else self.decoder(z)  # (B, C, H, W)
        return 2 * torch.sigmoid(out) - 1 if self.bernoulli else out.clamp(-1, 1)


class LatentDecoder(nn.Module):
    """A KL autoencoder's decoder as ``KLAutoencoder.decode``: scaled latents (B, c, h, w) -> images
    (B, C, H, W) in [-1, 1]."""

    def __init__(self, decoder: nn.Module, scale_factor: float) -> None:
        super().__init__()
        self.decoder, self.scale_factor = decoder, float(scale_factor)

    def forward(self, z: Tensor) -> Tensor:
        # Copied from KLAutoencoder.decode.
        return self.decoder(z / self.scale_factor).clamp(-1, 1)  # (B, C, H, W)


class TokenDecoder(nn.Module):
    """A VQ-VAE's codebook and decoder as ``VQVAE.decode``: token ids (B, h, w) -> images (B, C, H, W)
    in [-1, 1]."""

    def __init__(self, quantizer: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.quantizer, self.decoder = quantizer, decoder

    def forward(self, ids: Tensor) -> Tensor:
        # Copied from VQVAE.decode (ids already (B, h, w)).
        return self.decoder(self.quantizer.lookup(ids)).clamp(-1, 1)  # (B, C, H, W)


# ---------------------------------------------------------------------- which programs a module has

EXPORTED = (
    "Diffusion, EDM, FlowMatching (their denoiser), GAN (its generator), VAE, KLAutoencoder, VQVAE (decoders)"
)


def programs(module: LightningModule) -> list[Program]:
    """The programs of ``module`` (module docstring), their networks in eval mode; one ``ConfigError``
    line for a module that has none (a next-token model's decode step is ``decoding.py``'s, written
    by ``formats.save_decode_step``; masked-token models export their weights with safetensors)."""
    if isinstance(module, DenoisingModule):
        found = [_denoiser(module)]
        if module.first_stage is not None:  # latent: the sampler's latents need the first stage's decoder
            found.append(_kl_decoder(module.first_stage.autoencoder))
    elif isinstance(module, GAN):
        found = [_generator(module)]
    elif isinstance(module, VAE):
        found = [_vae_decoder(module)]
    elif isinstance(module, KLAutoencoder):
        found = [_kl_decoder(module)]
    elif isinstance(module, VQVAE):
        found = [_vq_decoder(module)]
    else:
        raise ConfigError(
            f"a {type(module).__name__} has no program for torch_export or onnx (those cover {EXPORTED}, "
            "and the decode step of a next-token GPT or WaveNet): use --format safetensors"
        )
    for program in found:
        program.network.eval()  # traced as sample() runs it: batch-norm statistics, no dropout
    return found


def _labels(num_classes: int, null: bool) -> TensorSpec:
    what = f"class labels in [0, {num_classes - 1}]" + (f"; {num_classes} is the null label" if null else "")
    return TensorSpec("y", (BATCH,), torch.int64, what, high=num_classes + int(null))


def _denoiser(module: DenoisingModule) -> Program:
    C, H, W = module.net_shape
    if isinstance(module, Diffusion):
        t = TensorSpec(
            "t", (BATCH,), torch.int64, "diffusion step index in [0, T - 1]", high=module.num_timesteps
        )
        out = f"the network's {module.hparams.prediction} prediction"
    else:  # EDM's and flow matching's networks take a float time on the DDPM step scale
        what = "edm_net_time(sigma)" if isinstance(module, EDM) else "1000 t, t in [0, 1] (1 = noise)"
        t = TensorSpec(
            "t", (BATCH,), torch.float32, f"time: {what} (export.json sampler)", high=1000, uniform=True
        )
        out = "F, preconditioned by c_skip, c_out" if isinstance(module, EDM) else "the velocity eps - x0"
    x = TensorSpec(
        "x", (BATCH, C, H, W), torch.float32, "noisy input x_t" + (" (latents)" if module.first_stage else "")
    )
    inputs = (x, t) + ((_labels(module.num_classes, null=True),) if module.num_classes > 0 else ())
    output = TensorSpec("out", x.shape, torch.float32, out)
    if module.text is None:
        return Program("denoiser", module.net, inputs, output)
    encoder = module.net.text_encoder
    vocabulary = module.hparams.get("text_vocabulary")
    tokens = "UTF-8 bytes + 1" if vocabulary is None else "word i of the text_vocabulary in export.json + 1"
    ids = TensorSpec(
        "ids",
        (BATCH, int(encoder.max_length)),
        torch.int64,
        f"caption token ids ({tokens}; 0 pads, all 0 = the empty caption of guidance)",
        high=int(encoder.vocab_size),
    )
    wrapper = LabelledTextDenoiser if module.num_classes > 0 else TextDenoiser
    return Program("denoiser", wrapper(module.net), (*inputs, ids), output)


def _images(shape: tuple[int, ...], what: str) -> TensorSpec:
    return TensorSpec("images", (BATCH, *shape), torch.float32, f"{what}, in [-1, 1]")


def _generator(module: GAN) -> Program:
    z = TensorSpec(
        "z", (BATCH, module.latent_dim), torch.float32, "noise z ~ N(0, I) (truncated: export.json)"
    )
    conditional = module.num_classes > 0
    inputs = (z, _labels(module.num_classes, null=False)) if conditional else (z,)
    network = Generator(module.net_g, conditional)
    return Program("generator", network, inputs, _images(module.sample_shape, "generated images"))


def _vae_decoder(module: VAE) -> Program:
    z = TensorSpec("z", (BATCH, module.latent_dim), torch.float32, "latents, prior N(0, I)")
    conditional = module.num_classes > 0
    inputs = (z, _labels(module.num_classes, null=False)) if conditional else (z,)
    network = MeanImageDecoder(module.decoder, module.likelihood == "bernoulli", conditional)
    return Program("decoder", network, inputs, _images(module.sample_shape, "the decoder's mean images"))


def _kl_decoder(autoencoder: KLAutoencoder) -> Program:
    z = TensorSpec(
        "z", (BATCH, *autoencoder.latent_shape), torch.float32, "scaled latents scale_factor * E(x)"
    )
    network = LatentDecoder(autoencoder.decoder, float(autoencoder.scale_factor))
    return Program("decoder", network, (z,), _images(autoencoder.sample_shape, "decoded images"))


def _vq_decoder(module: VQVAE) -> Program:
    ids = TensorSpec(
        "ids", (BATCH, *module.token_shape), torch.int64, "token ids (codebook rows)", high=module.vocab_size
    )
    network = TokenDecoder(module.quantizer, module.decoder)
    return Program("decoder", network, (ids,), _images(module.sample_shape, "decoded images"))


# ---------------------------------------------------------------------- networks and their configs


def networks(module: LightningModule) -> dict[str, nn.Module]:
    """The networks inference needs, by name (the module's attribute; ``decoder`` for a latent model's
    first stage): what ``--format safetensors`` writes."""
    if isinstance(module, DenoisingModule):
        found = {"net": module.net}
        if module.first_stage is not None:
            found["decoder"] = module.first_stage.autoencoder.decoder
        return found
    if isinstance(module, GAN):
        return {"net_g": module.net_g}  # the discriminator only trains
    if isinstance(module, VQVAE):
        return {"encoder": module.encoder, "quantizer": module.quantizer, "decoder": module.decoder}
    if isinstance(module, (VAE, KLAutoencoder)):
        return {"encoder": module.encoder, "decoder": module.decoder}
    if isinstance(module, (NextToken, MaskedTokens)):
        return {"net": module.net}
    raise ConfigError(
        f"a {type(module).__name__} is not a model lit-genai export knows: load a generative model"
    )


def network_configs(
    module: LightningModule, config: Optional[Mapping[str, Any]] = None
) -> dict[str, Optional[dict[str, Any]]]:
    """``{"class_path", "init_args"}`` of each of ``networks(module)``, None where unknown.

    Read from ``config`` (the run's ``model.init_args``, as ``lit-genai fit`` saved it), else the
    module's hyperparameters (a module built by LightningCLI, or a first stage's recorded configs),
    else the network's attributes (``pretrained.network_config``).
    """
    found: dict[str, Optional[dict[str, Any]]] = {}
    for name, net in networks(module).items():
        owner = module.first_stage.autoencoder if name == "decoder" and _is_latent(module) else module
        for source in ((config or {}) if owner is module else {}, owner.hparams):
            value = source.get(name)
            if isinstance(value, Mapping) and "class_path" in value:
                found[name] = {
                    "class_path": value["class_path"],
                    "init_args": dict(value.get("init_args") or {}),
                }
                break
        else:
            found[name] = network_config(net)
    return found


def _is_latent(module: LightningModule) -> bool:
    return isinstance(module, DenoisingModule) and module.first_stage is not None
