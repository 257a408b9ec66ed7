"""Image to image with any trained denoiser (SDEdit, inpainting by replacement, RePaint) and MaskGIT
image inpainting: exact identities of the pure loop (``diffusion/editing.py``), the module wiring of
``Diffusion`` / ``EDM`` / ``FlowMatching`` (pixels and latents) and ``MaskedTokens``, the settings'
PNG sources and named masks, and ``lit-genai predict --model.sampling.init_image/mask``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from helpers import run_cli, tiny_conditional_diffusion
from test_diffusion_latent import tiny_latent_diffusion

from lit_genai.diffusion import EDM, Diffusion, DiffusionSampling, EDMSampling, FlowMatching, FlowSampling
from lit_genai.diffusion.editing import (
    Stepper,
    ddim_stepper,
    ddpm_stepper,
    edit_sample,
    repaint_schedule,
    start_level,
)
from lit_genai.diffusion.sampling import ddim_sample, ddpm_sample
from lit_genai.diffusion.schedules import make_betas, schedule_tensors
from lit_genai.errors import ConfigError
from lit_genai.masked.module import MaskedSampling, MaskedTokens
from lit_genai.masked.sampling import token_fill_mask
from lit_genai.media import to_uint8
from lit_genai.media.image import write_images
from lit_genai.media.sources import named_mask, read_images, read_mask
from lit_genai.nn import UNet
from lit_genai.nn.transformer import GPT

SAMPLERS = ["ddpm", "ddim", "euler", "heun", "dpm_solver++"]


def _source(n: int = 3, size: int = 28) -> torch.Tensor:
    """n images in [-1, 1] on the 8-bit grid (what a PNG holds): (n, 1, size, size)."""
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, 256, (n, 1, size, size), generator=g).float() / 127.5 - 1.0


def _seeds(n: int, base: int = 1) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(base + i) for i in range(n)]


def _left(n: int, size: int = 28) -> torch.Tensor:
    return named_mask("left_half", (size, size)).expand(n, 1, size, size)


def _known(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x[~mask.expand_as(x)]


@pytest.fixture(scope="module")
def diffusion() -> Diffusion:
    torch.manual_seed(0)
    return tiny_conditional_diffusion(prediction="v", beta_schedule="cosine")


def _unet(num_classes: int = 10) -> UNet:
    torch.manual_seed(0)
    return UNet(
        in_channels=1,
        base_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_levels=(),
        num_groups=4,
        num_classes=num_classes,
    )


# ---------------------------------------------------------------------- the pure loop


def test_strength_picks_the_last_steps_and_is_checked():
    assert [start_level(10, s) for s in (0.0, 0.2, 0.6, 1.0)] == [10, 8, 4, 0]
    with pytest.raises(ConfigError, match=r"strength=1.5 must be in \[0, 1\]"):
        start_level(10, 1.5)


def test_repaint_schedule_by_hand():
    assert repaint_schedule(4, jump=2, resample=1) == [0, 1, 2, 3, 4]  # no resampling: no jump
    # with r steps left, r = 3, 2, 1 each jump back 1 level once (the authors' get_schedule_jump)
    assert repaint_schedule(4, jump=1, resample=2) == [0, 1, 0, 1, 2, 1, 2, 3, 2, 3, 4]
    # r = 3 and r = 1 jump back 2 levels once each
    assert repaint_schedule(5, jump=2, resample=2) == [0, 1, 2, 1, 0, 1, 2, 3, 4, 3, 2, 3, 4, 5]
    with pytest.raises(ConfigError, match="repaint_jump=0"):
        repaint_schedule(4, jump=0)


def _recording_model(log: list):
    """A v-predicting 'network' returning 0 and recording its inputs: x0 = sqrt(ab) x_t."""

    def model_fn(x_t, t):
        log.append((int(t[0]), x_t.clone()))
        return torch.zeros_like(x_t)

    return model_fn


def test_full_strength_keeps_the_source_with_weight_sqrt_alpha_bar_T():
    betas = make_betas("linear", 50)
    alpha_bar_T = float(schedule_tensors(betas)["alpha_bar"][-1])
    log, source = [], _source(2, 8)
    stepper = ddpm_stepper(
        _recording_model(log), betas, prediction="v", generator=torch.Generator().manual_seed(3)
    )
    edit_sample(stepper, source, strength=1.0, generator=torch.Generator().manual_seed(3))
    eps = torch.randn(source.shape, generator=torch.Generator().manual_seed(3))  # the loop's first draw
    t, x_T = log[0]
    assert t == 49
    expected = math.sqrt(alpha_bar_T) * source + math.sqrt(1 - alpha_bar_T) * eps
    assert torch.equal(x_T, expected)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_full_strength_with_zero_terminal_snr_is_sampling_from_the_same_noise(sampler):
    betas = make_betas("cosine", 20).clone()
    # alpha_bar = 0 from step 16 on (zero terminal SNR, Lin et al. 2024): DDIM-5 starts at step 16
    betas[16:] = 1.0
    alpha_bar = schedule_tensors(betas)["alpha_bar"].float()
    assert float(alpha_bar[16]) == 0.0
    net = _unet(0)
    model_fn = lambda x, t: net(x, t)  # noqa: E731
    source, shape = _source(2, 8), (2, 1, 8, 8)
    with torch.no_grad():
        if sampler == "ddpm":
            plain = ddpm_sample(
                model_fn, shape, betas, prediction="v", generator=torch.Generator().manual_seed(5)
            )
            g = torch.Generator().manual_seed(
                5
            )  # the stepper's noise and the start's: one stream, as the sampler's
            stepper = ddpm_stepper(model_fn, betas, prediction="v", generator=g)
        else:
            plain = ddim_sample(
                model_fn,
                shape,
                alpha_bar,
                steps=5,
                eta=1.0,
                prediction="v",
                generator=torch.Generator().manual_seed(5),
            )
            g = torch.Generator().manual_seed(5)
            stepper = ddim_stepper(model_fn, alpha_bar, steps=5, eta=1.0, prediction="v", generator=g)
        edited = edit_sample(stepper, source, strength=1.0, generator=g)
    assert torch.equal(edited, plain)


def test_without_a_mask_or_jumps_the_loop_is_the_sampler_stepwise():
    """A hand-written replacement loop over the stepper's steps gives what edit_sample gives."""
    levels = [(math.sqrt(a), math.sqrt(1 - a)) for a in (0.1, 0.5, 0.9)] + [(1.0, 0.0)]
    step = lambda x, k: 0.9 * x + 0.05 * k  # noqa: E731  any deterministic step
    stepper, source, mask = Stepper(levels, step), _source(2, 8), _left(2, 8)
    out = edit_sample(stepper, source, mask=mask, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    x = levels[0][0] * source + levels[0][1] * torch.randn(source.shape, generator=g)
    for k in range(3):
        x = step(x, k)
        a, s = levels[k + 1]
        known = source if s == 0 else a * source + s * torch.randn(source.shape, generator=g)
        x = torch.where(mask, x, known)
    assert torch.equal(out, x)
    assert torch.equal(_known(out, mask), _known(source, mask))


# ---------------------------------------------------------------------- the modules


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sdedit_at_strength_0_returns_the_source(diffusion, sampler):
    source = _source()
    out = diffusion.sample(
        3, cond={"image": source, "label": torch.tensor([1, 2, 3])}, sampler=sampler, strength=0.0
    )
    assert torch.equal(out, source)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sdedit_changes_the_image_more_with_strength(diffusion, sampler):
    source = _source()
    distance = []
    for strength in (0.3, 1.0):
        out = diffusion.sample(
            3, cond={"image": source}, generator=_seeds(3), sampler=sampler, strength=strength
        )
        assert out.shape == source.shape and out.abs().max() <= 1
        distance.append(float((out - source).abs().mean()))
    assert 0 < distance[0] < distance[1]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_inpainting_keeps_every_known_pixel_and_repaint_without_resampling_is_replacement(diffusion, sampler):
    source, mask = _source(), _left(3)
    cond = {"image": source, "mask": mask, "label": torch.tensor([4, 5, 6])}
    replaced = diffusion.sample(3, cond=cond, generator=_seeds(3), sampler=sampler)
    assert torch.equal(_known(replaced, mask), _known(source, mask))
    assert not torch.equal(replaced[mask.expand_as(source)], source[mask.expand_as(source)])
    repaint1 = diffusion.sample(
        3, cond=cond, generator=_seeds(3), sampler=sampler, inpaint="repaint", repaint_resample=1
    )
    assert torch.equal(repaint1, replaced)
    repainted = diffusion.sample(
        3,
        cond=cond,
        generator=_seeds(3),
        sampler=sampler,
        inpaint="repaint",
        repaint_jump=1,
        repaint_resample=2,
    )
    assert torch.equal(_known(repainted, mask), _known(source, mask))
    assert not torch.equal(repainted, replaced)


def test_an_edit_depends_on_its_own_seed_only(diffusion):
    source, mask = _source(4), _left(4)
    together = diffusion.sample(4, cond={"image": source, "mask": mask}, generator=_seeds(4), sampler="ddim")
    alone = diffusion.sample(
        1, cond={"image": source[2:3], "mask": mask[2:3]}, generator=_seeds(1, base=3), sampler="ddim"
    )
    assert torch.allclose(together[2:3], alone, atol=1e-5)


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpm_solver++"])
def test_edm_sdedit_and_inpainting(sampler):
    module = EDM(
        _unet(), sample_shape=(1, 28, 28), num_classes=10, sampling=EDMSampling(sampler=sampler, steps=3)
    )
    source, mask = _source(), _left(3)
    assert torch.equal(module.sample(3, cond={"image": source}, strength=0.0), source)
    edited = module.sample(3, cond={"image": source}, generator=_seeds(3), strength=0.5)
    assert edited.shape == source.shape and not torch.equal(edited, source)
    filled = module.sample(3, cond={"image": source, "mask": mask}, generator=_seeds(3), s_churn=1.0)
    assert torch.equal(_known(filled, mask), _known(source, mask))


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpm_solver++"])
def test_flow_sdedit_and_inpainting(sampler):
    module = FlowMatching(
        _unet(), sample_shape=(1, 28, 28), num_classes=10, sampling=FlowSampling(sampler=sampler, steps=3)
    )
    source, mask = _source(), _left(3)
    assert torch.equal(module.sample(3, cond={"image": source}, strength=0.0), source)
    edited = module.sample(3, cond={"image": source}, generator=_seeds(3), strength=0.5)
    assert edited.shape == source.shape and not torch.equal(edited, source)
    filled = module.sample(
        3,
        cond={"image": source, "mask": mask},
        generator=_seeds(3),
        inpaint="repaint",
        repaint_jump=1,
        repaint_resample=2,
    )
    assert torch.equal(_known(filled, mask), _known(source, mask))


def test_flow_at_full_strength_is_sampling_from_the_same_noise():
    """A flow's t = 1 keeps no source (a = 0): SDEdit at strength 1 is plain sampling."""
    module = FlowMatching(_unet(0), sample_shape=(1, 28, 28), sampling=FlowSampling(sampler="euler", steps=3))
    plain = module.sample(2, generator=_seeds(2))
    edited = module.sample(2, cond={"image": _source(2)}, generator=_seeds(2), strength=1.0)
    assert torch.allclose(edited, plain, atol=1e-6)


def test_latent_diffusion_edits_in_latent_space_and_keeps_the_known_pixels(ae_checkpoint):
    module = tiny_latent_diffusion(ae_checkpoint)
    source, mask = _source(), _left(3)
    at_zero = module.sample(3, cond={"image": source}, strength=0.0)
    assert torch.equal(at_zero, module._to_images(module.first_stage.encode(source)))  # decode(encode(x))
    filled = module.sample(
        3, cond={"image": source, "mask": mask}, generator=_seeds(3), sampler="dpm_solver++"
    )
    assert torch.equal(_known(filled, mask), _known(source, mask))  # pasted in pixel space at the end


def test_a_mask_without_a_source_and_bad_sources_are_one_line(diffusion):
    with pytest.raises(ConfigError, match="a mask needs a source image"):
        diffusion.sample(1, cond={"mask": _left(1)})
    with pytest.raises(ConfigError, match=r"source images have shape \(1, 1, 8, 8\)"):
        diffusion.sample(1, cond={"image": _source(1, 8)})
    with pytest.raises(ConfigError, match="unknown mask 'middle'"):
        read_mask("middle", (28, 28))


# ---------------------------------------------------------------------- settings: PNG sources, named masks


def test_named_masks_and_png_sources_round_trip(tmp_path):
    assert named_mask("top_half", (4, 4))[0, 0].tolist() == [[True] * 4] * 2 + [[False] * 4] * 2
    assert named_mask("center", (4, 4))[0, 0].int().tolist() == [
        [0, 0, 0, 0],
        [0, 1, 1, 0],
        [0, 1, 1, 0],
        [0, 0, 0, 0],
    ]
    source = _source(2)
    write_images(tmp_path, ["a", "b"], to_uint8(source))
    assert torch.equal(read_images(tmp_path, (1, 28, 28)), source)  # x / 127.5 - 1 of the 8-bit values
    mask = torch.zeros(1, 1, 28, 28)
    mask[..., 3:9, :] = 1.0
    write_images(tmp_path / "mask", ["m"], to_uint8(mask * 2 - 1))
    assert torch.equal(read_mask(tmp_path / "mask" / "m.png", (28, 28)), mask.bool())
    with pytest.raises(ConfigError, match="does not exist"):
        read_images(tmp_path / "nothing.png", (1, 28, 28))


def test_settings_sources_cycle_over_the_sample_indices(diffusion, tmp_path):
    source = _source(2)
    write_images(tmp_path, ["a", "b"], to_uint8(source))
    module = tiny_conditional_diffusion(
        sampling=DiffusionSampling(steps=2, init_image=str(tmp_path), mask="left_half")
    )
    named = module.sources([0, 1, 2])
    assert torch.equal(named["image"], source[[0, 1, 0]])
    assert torch.equal(named["mask"], _left(3))
    out = module.predict_step(torch.arange(3))
    assert torch.equal(_known(out, _left(3)), _known(source[[0, 1, 0]], _left(3)))


def test_generate_gives_sample_i_source_i_mod_len_whatever_the_batch(tmp_path):
    from lit_genai.api import generate

    source = _source(2)
    write_images(tmp_path, ["a", "b"], to_uint8(source))
    module = tiny_conditional_diffusion()
    options = dict(init_image=str(tmp_path), mask="left_half")
    whole = generate(module, 3, start=1, seed=4, **options)  # uint8 (3, 1, 28, 28)
    batched = generate(module, 3, start=1, seed=4, batch_size=2, **options)
    assert torch.equal(whole, batched)
    assert torch.equal(_known(whole, _left(3)), _known(to_uint8(source[[1, 0, 1]]), _left(3)))


# ---------------------------------------------------------------------- MaskGIT


def test_token_mask_is_known_only_where_all_pixels_are():
    pixels = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    pixels[0, 0, 0, 0] = True  # one pixel of the top-left 2x2 cell
    pixels[0, 0, 2:, 2:] = True  # the whole bottom-right cell
    assert token_fill_mask(pixels, (2, 2)).tolist() == [[True, False, False, True]]


def test_maskgit_inpainting_keeps_the_known_tokens():
    V, h = 8, 4
    torch.manual_seed(0)
    net = GPT(vocab_size=V + 1, block_size=h * h, n_layer=1, n_head=2, n_embd=16, causal=False)
    module = MaskedTokens(net, vocab_size=V, block_size=h * h, sampling=MaskedSampling(steps=3))
    source = torch.randint(0, V, (2, h, h), generator=torch.Generator().manual_seed(1))
    mask = named_mask("top_half", (16, 16)).expand(2, 1, 16, 16)  # 4x4 pixels per token
    out = module.sample(2, cond={"image": source, "mask": mask}, generator=_seeds(2))
    known = ~token_fill_mask(mask, (h, h))
    assert torch.equal(out[known], source.reshape(2, -1)[known])
    assert int(known.sum()) == 2 * 8 and (out < V).all()
    assert torch.equal(module.sample(2, cond={"image": source}), source.reshape(2, -1))  # nothing to fill


def test_maskgit_inpainting_of_images_through_the_tokenizer(tmp_path):
    from test_data_tokens import _fit_and_save

    from lit_genai.data import MNIST5k

    tokenizer = _fit_and_save(tmp_path, 28, MNIST5k(batch_size=16))
    torch.manual_seed(0)
    net = GPT(vocab_size=33, block_size=49, n_layer=1, n_head=2, n_embd=16, causal=False)
    sampling = MaskedSampling(steps=2, tokenizer=str(tokenizer))
    module = MaskedTokens(net, vocab_size=32, block_size=49, sampling=sampling)
    source, mask = _source(2), _left(2)
    out = module.sample(2, cond={"image": source, "mask": mask}, generator=_seeds(2))
    tokens = module._tokenizer(sampling).encode(source).reshape(2, -1)  # (2, 49)
    known = ~token_fill_mask(mask, (7, 7))  # token column 3 holds pixels 12-15, half filled: filled
    assert int(known.sum()) == 2 * 21 and torch.equal(out[known], tokens[known])
    with pytest.raises(ConfigError, match="set model.sampling.tokenizer"):
        module.sample(2, cond={"image": source, "mask": mask}, tokenizer=None)
    # the settings' files, as predict draws them: sample i takes file i % len
    write_images(tmp_path / "sources", ["a", "b"], to_uint8(source))
    module.sampling = sampling.replace(init_image=str(tmp_path / "sources"), mask="left_half")
    predicted = module.predict_step(torch.arange(3))  # (3, 49)
    assert torch.equal(predicted[known[[0, 1, 0]]], tokens[[0, 1, 0]][known[[0, 1, 0]]])


# ---------------------------------------------------------------------- the command line

TINY = {
    "model": {
        "class_path": "lit_genai.diffusion.Diffusion",
        "init_args": {
            "net": {
                "class_path": "lit_genai.nn.UNet",
                "init_args": {
                    "in_channels": 1,
                    "base_channels": 8,
                    "channel_mult": [1],
                    "num_res_blocks": 1,
                    "attention_levels": [],
                    "num_groups": 4,
                    "num_classes": 10,
                },
            },
            "num_timesteps": 20,
            "beta_schedule": "cosine",
            "test_bpd_timesteps": 0,
            "sampling": {"sampler": "ddim", "steps": 2},
        },
    },
    "data": {"class_path": "lit_genai.data.Digits", "init_args": {"batch_size": 16, "predict_samples": 4}},
    "trainer": {"max_steps": 1, "limit_val_batches": 1, "logger": False, "enable_progress_bar": False},
    "samples": {"every_n_epochs": 0},
}


def _written(folder: Path, n: int) -> torch.Tensor:
    return torch.cat([read_images(folder / f"sample_{i:05d}.png", (1, 8, 8)) for i in range(n)])


def test_predict_with_init_image_and_mask_on_the_command_line(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    root = tmp_path / "run"
    assert run_cli(["fit", "--config", str(config), "--trainer.default_root_dir", str(root)]) == 0
    sources = _source(2, 8)
    write_images(tmp_path / "sources", ["s0", "s1"], to_uint8(sources))
    out = tmp_path / "out"
    args = [
        "predict",
        "--config",
        str(config),
        "--trainer.default_root_dir",
        str(root),
        "--ckpt_path",
        "last",
    ]
    args += ["--model.sampling.init_image", str(tmp_path / "sources"), "--model.sampling.mask", "right_half"]
    assert run_cli([*args, "--writer.output_dir", str(out)]) == 0
    written = _written(out, 4)
    assert written.shape[0] == 4
    mask = named_mask("right_half", (8, 8)).expand(4, 1, 8, 8)
    assert torch.equal(_known(written, mask), _known(sources[[0, 1, 0, 1]], mask))
    # SDEdit at strength 0 writes the sources back
    zero = tmp_path / "zero"
    args = [
        "predict",
        "--config",
        str(config),
        "--trainer.default_root_dir",
        str(root),
        "--ckpt_path",
        "last",
    ]
    args += ["--model.sampling.init_image", str(tmp_path / "sources"), "--model.sampling.strength", "0"]
    assert run_cli([*args, "--writer.output_dir", str(zero)]) == 0
    assert torch.equal(_written(zero, 4), sources[[0, 1, 0, 1]])


def test_a_missing_init_image_is_one_line(diffusion, tmp_path):
    with pytest.raises(ConfigError, match="model.sampling.init_image=.*does not exist"):
        diffusion.sample(1, init_image=str(tmp_path / "none.png"))
