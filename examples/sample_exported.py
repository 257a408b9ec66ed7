"""Sample images from an exported diffusion model with torch alone: no lit_genai import.

    lit-genai export --ckpt runs/diffusion-mnist --format torch_export --output exported/
    python examples/sample_exported.py exported/ --n 16 --output samples.png
    python examples/sample_exported.py exported/ --sampler ddim --steps 50 --labels 7 --guidance-scale 2

Reads ``export.json`` and ``denoiser.pt2`` (and ``decoder.pt2`` of a latent model) from the folder
``lit-genai export --format torch_export`` wrote, runs DDIM or DPM-Solver++(2M) with the program
(``torch.export.load(...).module()``) and writes a PNG grid. The defaults are the model's own
sampling settings (``export.json`` ``sampler.settings``); the schedule is the one the model holds.

Sample i starts from the noise of ``torch.Generator().manual_seed(seed + i)`` and, for a
class-conditional model given no ``--labels``, has label i % K: as ``lit-genai predict`` draws it, so
row i equals predict's ``sample_0000i.png`` with the same settings (up to float rounding).

The maths, as lit_genai/diffusion implements it:
    - DDIM (Song et al. 2021, eq. 12 and 16) on the steps range(0, T, T // steps) (``uniform``) or
      int(linspace(0, sqrt(0.8 T), steps)^2) (``quadratic``);
    - DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in the VE form x = x_t / sqrt(alpha_bar) on the
      Karras grid (Karras et al. 2022, eq. 5, rho = 7) from min(sigma_max, sigma_{T-1}) to sigma_0,
      then 0; the network sees the step nearest in log sigma;
    - classifier-free guidance (Ho & Salimans 2022, eq. 6): out_u + (1 + w) (out_c - out_u), both
      branches in one batch of 2B, y = K (the null label) for the unconditional one.

Shape legend: B batch (n), C/H/W image (or latent), T diffusion steps, S sampler steps.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

Model = Callable[[Tensor, int], Tensor]  # (x_t (B, C, H, W), step) -> the network's output (B, C, H, W)


def load(folder: Path) -> tuple[dict, torch.nn.Module, Optional[torch.nn.Module]]:
    """export.json, the denoiser program and (latent models) the decoder program of ``folder``."""
    info = json.loads((folder / "export.json").read_text())
    if info["sampler"]["paradigm"] != "diffusion" or info["format"] != "torch_export":
        raise SystemExit(
            f"{folder}: this example samples torch_export programs of Diffusion models; got the "
            f"{info['format']} export of a {info['module']} (see its export.json sampler section)"
        )
    programs = info["programs"]
    denoiser = torch.export.load(folder / programs["denoiser"]["file"]).module()
    latent = info["sampler"].get("latent")
    decoder = torch.export.load(folder / programs[latent["program"]]["file"]).module() if latent else None
    return info, denoiser, decoder


def guided(denoiser: torch.nn.Module, labels: Optional[Tensor], null_label: Optional[int], w: float) -> Model:
    """The network as ``model(x_t, step)``, with classifier-free guidance weight w when conditional."""

    def model(x: Tensor, step: int) -> Tensor:
        t = torch.full((x.shape[0],), step, dtype=torch.long)  # (B,)
        if labels is None:
            return denoiser(x, t)
        if w == 0:
            return denoiser(x, t, labels)
        null = torch.full_like(labels, null_label)
        out_c, out_u = denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
        return out_u + (1 + w) * (out_c - out_u)  # Ho & Salimans 2022, eq. 6

    return model


def to_x0_eps(prediction: str, out: Tensor, x_t: Tensor, alpha_bar: float) -> tuple[Tensor, Tensor]:
    """The network's output as (x0, eps), with x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps."""
    ab = x_t.new_tensor(alpha_bar)  # in x's dtype, as lit_genai's samplers compute it
    a, s = torch.sqrt(ab), torch.sqrt(1.0 - ab)
    if prediction == "eps":
        return (x_t - s * out) / a, out
    if prediction == "x0":
        return out, (x_t - a * out) / s
    return a * x_t - s * out, s * x_t + a * out  # v (Salimans & Ho 2022)


def noise(shape: tuple[int, ...], generators: list[torch.Generator]) -> Tensor:
    """(B, ...) standard normal noise, row i from generator i alone."""
    return torch.stack([torch.randn(shape[1:], generator=g) for g in generators])


@torch.no_grad()
def ddim(
    model: Model, shape, alpha_bar: Tensor, generators, prediction: str, clip: bool, settings: dict
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) with stochasticity eta (eq. 16). (B, C, H, W) samples."""
    T, steps, eta = alpha_bar.shape[0], int(settings["steps"]), float(settings["eta"])
    if settings["skip"] == "uniform":
        timesteps = list(range(0, T, T // steps))  # (S,) DDIM sec. 4.2
    else:
        timesteps = (np.linspace(0, np.sqrt(T * 0.8), steps) ** 2).astype(np.int64).tolist()
    x = noise(shape, generators)  # x_T ~ N(0, I)
    for i, j in zip(reversed(timesteps), reversed([-1, *timesteps[:-1]]), strict=True):
        ab, ab_prev = float(alpha_bar[i]), float(alpha_bar[j]) if j >= 0 else 1.0
        x0, eps = to_x0_eps(prediction, model(x, i), x, ab)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x - math.sqrt(ab) * x0) / math.sqrt(1.0 - ab)
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(max(1 - ab / ab_prev, 0.0))  # eq. 16
        x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps  # eq. 12
        if sigma > 0:
            x = x + sigma * noise(shape, generators)
    return x


@torch.no_grad()
def dpm_solver_pp_2m(
    model: Model, shape, alpha_bar: Tensor, generators, prediction: str, clip: bool, settings: dict
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) on the Karras grid. (B, C, H, W) samples."""
    sigmas = torch.sqrt((1.0 - alpha_bar) / alpha_bar)  # (T,) float64, increasing in t
    log_sigmas = np.log(sigmas.numpy())
    top = (
        float(sigmas[-1]) if settings["sigma_max"] is None else min(float(sigmas[-1]), settings["sigma_max"])
    )
    steps, rho = int(settings["steps"]), 7.0
    ramp = (
        torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
        if steps > 1
        else torch.zeros(1, dtype=torch.float64)
    )
    lo, hi = float(sigmas[0]) ** (1 / rho), top ** (1 / rho)
    grid = ((hi + ramp * (lo - hi)) ** rho).tolist()  # Karras et al. 2022, eq. 5
    grid[0] = top
    if steps > 1:
        grid[-1] = float(sigmas[0])
    grid.append(0.0)

    def denoise(x: Tensor, sigma: float) -> Tensor:  # D(x, sigma) of the VP network (EDM Table 1)
        step = int(round(float(np.interp(math.log(sigma), log_sigmas, np.arange(len(log_sigmas))))))
        ab = 1.0 / (1.0 + sigma**2)
        x_t = x * math.sqrt(ab)
        x0, _ = to_x0_eps(prediction, model(x_t, step).to(x.dtype), x_t, ab)
        return x0.clamp(-1.0, 1.0) if clip else x0

    x = grid[0] * noise(shape, generators)  # x ~ N(0, sigma_max^2 I)
    previous, h_previous = None, 0.0
    for sigma, sigma_next in zip(grid[:-1], grid[1:], strict=True):
        denoised = denoise(x, sigma)  # D_i
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma / sigma_next)
            if previous is None:
                estimate = denoised  # first step: DPM-Solver++(1) = DDIM
            else:
                r = h_previous / h
                estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
            x = (sigma_next / sigma) * x - math.expm1(-h) * estimate
            h_previous = h
        previous = denoised
    return x


def sample(folder: Path, n: int, seed: int = 0, labels: Optional[list[int]] = None, **overrides) -> Tensor:
    """``n`` images (n, C, H, W) in [-1, 1] from the export in ``folder``; ``overrides`` replace
    sampling settings (``sampler``, ``steps``, ``eta``, ``guidance_scale``, ...)."""
    info, denoiser, decoder = load(folder)
    sampler = info["sampler"]
    settings = {**sampler["settings"], **{k: v for k, v in overrides.items() if v is not None}}
    K = info["num_classes"]
    y = None
    if K > 0:
        given = labels if labels else [i % K for i in range(n)]  # predict's labels
        y = torch.tensor([given[i % len(given)] for i in range(n)], dtype=torch.long)  # (B,)
    model = guided(denoiser, y, info["null_label"], float(settings["guidance_scale"]))
    x_spec = info["programs"]["denoiser"]["inputs"][0]
    shape = (n, *x_spec["shape"][1:])  # (B, C, H, W)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    alpha_bar = torch.tensor(sampler["alphas_cumprod"], dtype=torch.float64)  # (T,)
    run = {"ddim": ddim, "dpm_solver++": dpm_solver_pp_2m}.get(settings["sampler"])
    if run is None:
        raise SystemExit(f"sampler {settings['sampler']!r}: this example has ddim and dpm_solver++")
    x = run(model, shape, alpha_bar, generators, sampler["prediction"], sampler["clip_denoised"], settings)
    if decoder is not None:
        with torch.no_grad():
            x = decoder(x)  # latents -> images (B, C', H', W')
    return x.clamp(-1, 1)


def write_grid(images: Tensor, path: Path) -> None:
    """(B, C, H, W) in [-1, 1] -> a PNG grid, square, 2-pixel black borders."""
    from PIL import Image

    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (B, C, H, W)
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # grey -> RGB
    B, C, H, W = x.shape
    cols = max(1, math.ceil(math.sqrt(B)))
    rows = math.ceil(B / cols)
    grid = torch.zeros(C, rows * (H + 2) + 2, cols * (W + 2) + 2, dtype=torch.uint8)
    for i in range(B):
        r, c = divmod(i, cols)
        grid[:, 2 + r * (H + 2) : 2 + r * (H + 2) + H, 2 + c * (W + 2) : 2 + c * (W + 2) + W] = x[i]
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="what lit-genai export --format torch_export wrote")
    parser.add_argument("--n", type=int, default=16, help="number of samples")
    parser.add_argument("--seed", type=int, default=0, help="sample i uses the generator seed + i")
    parser.add_argument("--labels", type=int, nargs="*", help="class labels, cycled (default: i %% K)")
    parser.add_argument("--sampler", choices=["ddim", "dpm_solver++"], help="default: the model's")
    parser.add_argument("--steps", type=int, help="sampler steps (default: the model's)")
    parser.add_argument("--eta", type=float, help="DDIM stochasticity (default: the model's)")
    parser.add_argument("--guidance-scale", type=float, help="guidance weight w (default: the model's)")
    parser.add_argument("--output", type=Path, default=Path("samples.png"), help="the PNG grid")
    parser.add_argument("--tensor", type=Path, help="also save the float samples here (torch.save)")
    args = parser.parse_args(argv)
    images = sample(
        args.folder,
        args.n,
        args.seed,
        args.labels,
        sampler=args.sampler,
        steps=args.steps,
        eta=args.eta,
        guidance_scale=args.guidance_scale,
    )
    write_grid(images, args.output)
    if args.tensor:
        torch.save(images, args.tensor)
    print(f"wrote {args.output} ({tuple(images.shape)})")


if __name__ == "__main__":
    main()
