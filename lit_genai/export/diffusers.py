"""A trained DDPM (``lit_genai.diffusion.Diffusion`` with ``lit_genai.nn.UNet``) as a diffusers folder.

diffusers (huggingface/diffusers) keeps a DDPM as a pipeline folder: ``unet/`` (a ``UNet2DModel``),
``scheduler/`` (a ``DDPMScheduler``) and ``model_index.json`` naming the pipeline (``DDPMPipeline``),
each written by its ``save_pretrained``. Our UNet is the DDPM authors' network (Ho et al. 2020,
Appendix B), which diffusers ported for ``google/ddpm-cifar10-32``; these ``UNet2DModel`` settings
reproduce it exactly:

==========================  ============================================================================
``UNet2DModel``             from ``UNet``
==========================  ============================================================================
``block_out_channels``      ``base_channels * m`` for m in ``channel_mult``
``layers_per_block``        ``num_res_blocks`` (the up path has one more, in both)
``down/up_block_types``     ``AttnDownBlock2D`` / ``AttnUpBlock2D`` at ``attention_levels``, else plain
``attention_head_dim``      None: one head as wide as its level (DDPM's single-head attention)
``norm_num_groups``         ``num_groups``; ``norm_eps`` 1e-6 (TF's group norm)
``downsample_padding``      0: diffusers then pads one pixel right/bottom, as TF's 'SAME' stride 2
``flip_sin_to_cos``         False and ``freq_shift`` 1: sin then cos, frequencies over ``half - 1``
``num_class_embeds``        ``num_classes + 1``: row ``num_classes`` is the null label of guidance
==========================  ============================================================================

The weights map one to one under other names (``_rename``); the attention's 1x1 convolutions become
diffusers' linear layers (the same matrices). The scheduler gets the module's betas as
``trained_betas`` (our linear schedule is DDPM's scaled by 1000/T, which diffusers' ``linear`` is
not; the cosine and sigmoid ones are ours too), with ``prediction_type``, ``clip_sample`` and the
ancestral step's ``variance_type`` of the module's settings.

``DDPMPipeline`` passes no class labels, so a class-conditional model's folder has ``unet/`` and
``scheduler/`` but no ``model_index.json``: call the UNet with ``class_labels`` (guidance by hand).
What cannot be expressed in diffusers is one ``ConfigError`` line.

Shape legend: B batch, C channels, H/W spatial size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from lit_genai.errors import ConfigError
from lit_genai.nn.unet import AttnBlock, Downsample, ResBlock, UNet, Upsample

# diffusers' names of the leaves of a residual block and of an attention block
_RESBLOCK = {"temb_proj": "time_emb_proj", "shortcut": "conv_shortcut"}
_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
VARIANCE_TYPES = {"beta": "fixed_large", "beta_tilde": "fixed_small"}  # DDPM sec. 3.2's two choices


def _import_diffusers() -> Any:
    try:
        import diffusers
    except ImportError:
        raise ConfigError(
            "--format diffusers needs the diffusers package: pip install 'lit_genai[interop]'"
        ) from None
    return diffusers


def check_exportable(module: LightningModule) -> UNet:
    """The module's UNet, or one ``ConfigError`` line saying why diffusers cannot hold the model."""
    from lit_genai.diffusion import Diffusion

    if not isinstance(module, Diffusion):
        raise ConfigError(
            f"--format diffusers exports a DDPM (lit_genai.diffusion.Diffusion), not a "
            f"{type(module).__name__}: use --format safetensors or onnx for this model"
        )
    net = module.net
    if not isinstance(net, UNet):
        raise ConfigError(
            f"--format diffusers exports a Diffusion with a lit_genai.nn.UNet, but model.net is a "
            f"{type(net).__name__}: use --format safetensors or onnx for this model"
        )
    if module.first_stage is not None:
        raise ConfigError(
            "--format diffusers: model.autoencoder makes this a model of a KLAutoencoder's latents, which "
            "diffusers cannot decode; export an image-space Diffusion (or use --format safetensors)"
        )
    if net.base_channels < 4:  # diffusers' timestep frequencies divide by half - 1 = 0 (ours: by 1)
        raise ConfigError(
            f"--format diffusers: UNet base_channels={net.base_channels}; diffusers' timestep embedding "
            "needs base_channels >= 4 (it divides by base_channels / 2 - 1)"
        )
    return net


def unet_config(net: UNet, sample_shape: tuple[int, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    """The ``UNet2DModel`` config of ``net`` and the rename map {our module path: diffusers'}.

    Both are read from the network's modules (the widths, blocks and attention it has), so any
    ``UNet`` exports, however it was built.
    """
    rename = {"temb.0": "time_embedding.linear_1", "temb.2": "time_embedding.linear_2"}
    rename |= {"label_emb": "class_embedding", "norm_out": "conv_norm_out"}
    widths: list[int] = []
    attention: list[bool] = []
    level = j = 0  # diffusers' down block and its j-th resnet
    for i, block in enumerate(net.down):
        if isinstance(block, Downsample):
            rename[f"down.{i}.conv"] = f"down_blocks.{level}.downsamplers.0.conv"
            level, j = level + 1, 0
            continue
        resblock, attn = block
        if j == 0:
            widths.append(resblock.conv1.out_channels)
            attention.append(isinstance(attn, AttnBlock))
        rename[f"down.{i}.0"] = f"down_blocks.{level}.resnets.{j}"
        rename[f"down.{i}.1"] = f"down_blocks.{level}.attentions.{j}"
        j += 1
    num_res_blocks = j  # of the last level; every level has as many
    rename |= {
        "mid.0": "mid_block.resnets.0",
        "mid.1": "mid_block.attentions.0",
        "mid.2": "mid_block.resnets.1",
    }
    level = j = 0  # diffusers' up block (deepest first) and its j-th resnet
    for i, block in enumerate(net.up):
        if isinstance(block, Upsample):
            rename[f"up.{i}.conv"] = f"up_blocks.{level}.upsamplers.0.conv"
            level, j = level + 1, 0
            continue
        rename[f"up.{i}.0"] = f"up_blocks.{level}.resnets.{j}"
        rename[f"up.{i}.1"] = f"up_blocks.{level}.attentions.{j}"
        j += 1
    dropout = next(m.dropout.p for m in net.modules() if isinstance(m, ResBlock))
    H, W = sample_shape[1:]
    config = dict(
        sample_size=H if H == W else [H, W],
        in_channels=net.in_channels,
        out_channels=net.out_channels,
        flip_sin_to_cos=False,
        freq_shift=1,
        down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        block_out_channels=widths,
        layers_per_block=num_res_blocks,
        downsample_padding=0,
        dropout=dropout,
        act_fn="silu",
        attention_head_dim=None,
        norm_num_groups=net.num_groups,
        norm_eps=1e-6,
        num_class_embeds=net.num_classes + 1 if net.num_classes > 0 else None,
    )
    return config, rename


def _rename(key: str, rename: dict[str, str]) -> str:
    """Our state-dict key -> diffusers', through the module map and the names inside a block."""
    module, _, param = key.rpartition(".")
    for ours, theirs in rename.items():
        if module == ours:
            return f"{theirs}.{param}"
        if module.startswith(ours + "."):
            leaf = module[len(ours) + 1 :]
            leaves = _ATTENTION if theirs.rpartition(".")[0].endswith("attentions") else _RESBLOCK
            return f"{theirs}.{leaves.get(leaf, leaf)}.{param}"
    return key  # conv_in, conv_out: the same names


def unet_state_dict(net: UNet, rename: dict[str, str]) -> dict[str, Tensor]:
    """``net``'s weights under diffusers' names, float32 on the CPU; (C, C, 1, 1) attention kernels
    become the (C, C) matrices of diffusers' linear layers."""
    state = {}
    for key, value in net.state_dict().items():
        name = _rename(key, rename)
        value = value.detach().to("cpu", torch.float32)
        if ".attentions." in name and value.dim() == 4:
            value = value[:, :, 0, 0]  # (C, C, 1, 1) -> (C, C)
        state[name] = value
    return state


def scheduler_config(module: LightningModule) -> dict[str, Any]:
    """The ``DDPMScheduler`` config of a ``Diffusion``: its betas, prediction and sampling settings."""
    sampling = module.sampling
    return dict(
        num_train_timesteps=module.num_timesteps,
        # The float32 betas the module samples with, exactly (diffusers reads them as float32).
        trained_betas=module.betas.detach().cpu().tolist(),
        prediction_type=PREDICTION_TYPES[module.hparams.prediction],
        variance_type=VARIANCE_TYPES[sampling.variance],
        clip_sample=bool(sampling.clip_denoised),
        clip_sample_range=1.0,
        # "leading" steps t = 0, T/S, 2T/S, ...: our DDIM "uniform" skip (S dividing T), for a DDIM swapped in
        timestep_spacing="leading",
    )


def export_diffusers(module: LightningModule, output_dir: Union[str, Path]) -> Path:
    """Write ``module`` (a loaded ``Diffusion``, EMA weights in) as a diffusers folder (module docstring).

    Args:
        module: a ``Diffusion`` with a ``lit_genai.nn.UNet``, in image space.
        output_dir: the folder to write (created; files of the same names are replaced).

    Returns:
        ``output_dir``: ``unet/`` + ``scheduler/`` (+ ``model_index.json`` when unconditional, for
        ``DDPMPipeline.from_pretrained``) and a ``README.md`` saying how to use them.
    """
    net = check_exportable(module)
    diffusers = _import_diffusers()
    config, rename = unet_config(net, module.net_shape)
    unet = diffusers.UNet2DModel(**config)
    unet.load_state_dict(unet_state_dict(net, rename), strict=True)
    scheduler = diffusers.DDPMScheduler(**scheduler_config(module))
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    if net.num_classes == 0:
        diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(output)
    else:
        unet.save_pretrained(output / "unet")
        scheduler.save_pretrained(output / "scheduler")
    from lit_genai.export.hub import model_card  # the card of hub.save_pretrained, with this folder's use

    model_card(module, usage=_usage(module)).save(output / "README.md")
    return output


def _usage(module: LightningModule) -> str:
    """The README's how-to for this folder."""
    T, K = module.num_timesteps, module.num_classes
    if K == 0:
        return (
            "```python\nimport torch\nfrom diffusers import DDPMPipeline\n\n"
            'pipe = DDPMPipeline.from_pretrained("<this folder>")\n'
            f"images = pipe(batch_size=4, num_inference_steps={T}, "
            "generator=torch.Generator().manual_seed(0)).images\n```\n\n"
            f"`num_inference_steps={T}` is lit_genai's `sampler: ddpm`. For fewer steps swap in "
            "`DDIMScheduler.from_config(pipe.scheduler.config)` into a `DDIMPipeline`: with S steps "
            f"dividing {T} and `use_clipped_model_output=True` it samples as lit_genai's `sampler: ddim` "
            "(`skip: uniform`, the same `eta`)."
        )
    return (
        "```python\nimport torch\nfrom diffusers import DDPMScheduler, UNet2DModel\n\n"
        'unet = UNet2DModel.from_pretrained("<this folder>", subfolder="unet")\n'
        'scheduler = DDPMScheduler.from_pretrained("<this folder>", subfolder="scheduler")\n'
        f"x = torch.randn(4, {', '.join(map(str, module.net_shape))})\n"
        "labels = torch.tensor([0, 1, 2, 3])\n"
        f"scheduler.set_timesteps({T})\n"
        "for t in scheduler.timesteps:\n"
        "    x = scheduler.step(unet(x, t, class_labels=labels).sample, t, x).prev_sample\n```\n\n"
        f"Labels are 0..{K - 1}; label {K} is the null label. Classifier-free guidance with "
        f"lit_genai's weight w: `out = (1 + w) * unet(x, t, labels) - w * unet(x, t, null)` "
        "(diffusers' `guidance_scale` is 1 + w)."
    )
