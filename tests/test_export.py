"""``lit-genai export``: exported programs, ONNX models and safetensors weights equal the eager modules.

The modules are the tiny rows of ``test_contract.py`` (and unconditional twins where an experiment uses
one: ``ddpm_cifar10`` and ``dcgan_mnist``), their exported networks given random weights (the
denoisers' and generators' last layers start at zero, which would make every comparison pass). Checked:

- each program (UNet and DiT denoisers with int and float times, DCGAN and SNGAN generators with and
  without labels, VAE / KL autoencoder / VQ-VAE decoders) saved by ``torch.export.save`` and loaded
  back gives the eager outputs at two batch sizes (the batch is dynamic);
- each program is what the module itself computes: ``decode`` for decoders, ``sample`` (same z) for
  generators;
- the ONNX model under onnxruntime gives the eager outputs (one in the default suite; the rest slow);
  an operator ONNX cannot express is one line naming it;
- the safetensors files load into fresh networks, built from ``export.json``'s config where it has one;
- ``examples/sample_exported.py``, with lit_genai made unimportable, reproduces ``module.sample`` (DDIM
  and DPM-Solver++(2M), with guidance) from the same seeds;
- the command on a tiny run folder writes the files, with the EMA weights by default (the training
  weights with ``--ema false``), a next-token GPT's decode step and a diffusers folder; a file that is
  not a checkpoint and a format the model does not have are one line, and leave no file behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import run_cli
from test_contract import AUTOENCODERS, GENERATIVE, TEXT, K, _diffusion, _unet
from torch import nn

from lit_genai import paradigm
from lit_genai.errors import ConfigError
from lit_genai.export.formats import export, export_program, save_onnx
from lit_genai.export.programs import BATCH, Program, TensorSpec, programs
from lit_genai.gan import GAN
from lit_genai.nn.dcgan import DCGANDiscriminator, DCGANGenerator

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "sample_exported.py"


def _row(name: str):
    return lambda: GENERATIVE[name][1](None)[0]


def _unconditional_dcgan() -> GAN:  # dcgan_mnist: the gan-dcgan row without labels
    return GAN(
        DCGANGenerator(latent_dim=8, out_channels=1, image_size=28, base_channels=4, num_classes=0),
        DCGANDiscriminator(in_channels=1, image_size=28, base_channels=4, num_classes=0),
        sample_shape=(1, 28, 28),
    )


# name: (factory of the module, whether its ONNX check runs in the default suite)
CASES = {
    "diffusion-unet": (_row("diffusion-unet"), False),
    "diffusion-unet-unconditional": (lambda: _diffusion(_unet(classes=0), num_classes=0), False),
    "diffusion-dit": (_row("diffusion-dit"), False),
    "text2image-diffusion-unet": (_row("text2image-diffusion-unet"), False),  # caption ids in, encoder inside
    "edm-unet": (_row("edm-unet"), False),  # float times
    "flow-unet": (_row("flow-unet"), False),
    "gan-dcgan": (_row("gan-dcgan"), True),
    "gan-dcgan-unconditional": (_unconditional_dcgan, False),
    "gan-resnet": (_row("gan-resnet"), False),
    "vae": (AUTOENCODERS["vae"][1], False),
    "kl-autoencoder": (AUTOENCODERS["kl-autoencoder"][1], False),
    "vqvae": (AUTOENCODERS["vqvae"][1], False),
}


def randomize(net: nn.Module, seed: int = 0) -> None:
    """Random weights and batch-norm statistics, so that no output is trivially zero."""
    generator = torch.Generator().manual_seed(seed)
    parameters = dict(net.named_parameters())
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif name.endswith("running_mean") or name in parameters:
                tensor.copy_(0.3 * torch.randn(tensor.shape, generator=generator))


def _build(name: str):
    torch.manual_seed(0)
    module = CASES[name][0]().eval()
    for program in programs(module):
        randomize(program.network)
    return module


# flow-unet's program is edm-unet's (a UNet with float times): checked in the slow suite only.
EXPORT_CASES = [pytest.param(n, marks=pytest.mark.slow) if n == "flow-unet" else n for n in CASES]


@pytest.fixture(scope="module", params=EXPORT_CASES)
def exported(request, tmp_path_factory):
    """(module, its programs, the torch_export folder) of each case, exported once."""
    module = _build(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    export(module, "torch_export", folder)
    return module, programs(module), folder


def _close(actual, expected, tolerance: float = 1e-5) -> None:
    torch.testing.assert_close(torch.as_tensor(actual), expected, rtol=tolerance, atol=tolerance)


# ---------------------------------------------------------------------- torch.export


def test_the_exported_program_equals_eager_at_two_batch_sizes(exported):
    module, found, folder = exported
    info = json.loads((folder / "export.json").read_text())
    for program in found:
        loaded = torch.export.load(folder / f"{program.name}.pt2").module()
        assert info["programs"][program.name]["inputs"][0]["shape"][0] == BATCH
        for batch in (1, 5):
            inputs = program.example_inputs(batch, seed=batch)
            with torch.no_grad():
                expected = program.network(*inputs)
                _close(loaded(*inputs), expected)
            assert expected.abs().max() > 1e-3  # the weights are random, the output not trivial
            assert list(expected.shape[1:]) == info["programs"][program.name]["outputs"][0]["shape"][1:]


def test_a_text_denoiser_takes_caption_ids_and_runs_its_encoder_inside(tmp_path):
    module = _build("text2image-diffusion-unet")
    (program,) = programs(module)
    assert [spec.name for spec in program.inputs] == ["x", "t", "ids"]
    x, t, ids = program.example_inputs(3, seed=0)
    ids[0] = 0  # the empty caption: the null condition of guidance
    with torch.no_grad():
        context = module.net.text_encoder(ids, ids != 0)
        torch.testing.assert_close(program.network(x, t, ids), module.net(x, t, context=context))
    export(module, "torch_export", tmp_path)
    info = json.loads((tmp_path / "export.json").read_text())
    assert (
        info["text"]["vocabulary"] == module.hparams.text_vocabulary and info["text"]["tokenizer"] == "words"
    )


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith(("gan", "vae", "kl", "vq"))])
def test_the_program_is_what_the_module_samples_and_decodes(name):
    module = _build(name)
    (program,) = programs(module)
    inputs = program.example_inputs(4, seed=1)
    with torch.no_grad():
        if isinstance(module, GAN):
            generators = paradigm.sample_generators(3, range(4))
            z = paradigm.randn((4, module.latent_dim), generators, torch.device("cpu"))
            labels = inputs[1] if module.num_classes > 0 else None
            expected = module.sample(4, cond=labels, generator=paradigm.sample_generators(3, range(4)))
            inputs = (z, labels) if labels is not None else (z,)
        else:
            expected = module.decode(*inputs)
        _close(program.network(*inputs), expected)


# ---------------------------------------------------------------------- ONNX


def _onnx_equals_eager(name: str, tmp_path: Path) -> None:
    """1e-5, and 1e-4 for the DiT: onnxruntime's LayerNorm, softmax and GELU kernels sum in another
    order, and the random-weight DiT's outputs reach ~10, so float32 rounding (~1e-6 relative) is
    ~1e-4 absolute there (the largest difference seen: 1.7e-4)."""
    ort = pytest.importorskip("onnxruntime")
    module = _build(name)
    export(module, "onnx", tmp_path)
    for program in programs(module):
        session = ort.InferenceSession(str(tmp_path / f"{program.name}.onnx"))
        assert [i.name for i in session.get_inputs()] == [s.name for s in program.inputs]
        assert session.get_inputs()[0].shape[0] == BATCH
        for batch in (1, 5):
            inputs = program.example_inputs(batch, seed=batch)
            (out,) = session.run(
                None, {s.name: x.numpy() for s, x in zip(program.inputs, inputs, strict=True)}
            )
            with torch.no_grad():
                _close(out, program.network(*inputs), tolerance=1e-4 if "dit" in name else 1e-5)


@pytest.mark.parametrize("name", [n for n, (_, fast) in CASES.items() if fast])
def test_the_onnx_model_equals_eager(name, tmp_path):
    _onnx_equals_eager(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, (_, fast) in CASES.items() if not fast])
def test_the_onnx_model_equals_eager_slow(name, tmp_path):
    _onnx_equals_eager(name, tmp_path)


class _CumulativeMax(nn.Module):
    def forward(self, x):
        return torch.cummax(x, dim=1).values  # (B, N): aten.cummax has no ONNX translation


def test_an_operator_onnx_cannot_express_is_one_line_naming_it(tmp_path):
    pytest.importorskip("onnxscript")
    spec = TensorSpec("x", (BATCH, 4), torch.float32, "values")
    program = Program("demo", _CumulativeMax(), (spec,), TensorSpec("out", (BATCH, 4), torch.float32, "max"))
    with pytest.raises(ConfigError) as error:
        save_onnx(program, export_program(program), tmp_path / "demo.onnx")
    message = str(error.value)
    assert "\n" not in message and "aten.cummax" in message and "--format torch_export" in message
    assert not (tmp_path / "demo.onnx").exists()


# ---------------------------------------------------------------------- safetensors


@pytest.mark.parametrize("name", ["diffusion-dit", "gan-dcgan", "kl-autoencoder", "vqvae"])
def test_the_safetensors_weights_load_into_a_fresh_network(name, tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    module = _build(name)
    export(module, "safetensors", tmp_path)
    info = json.loads((tmp_path / "export.json").read_text())
    torch.manual_seed(1)
    fresh = CASES[name][0]().eval()  # other initial weights
    for program, again in zip(programs(module), programs(fresh), strict=True):
        inputs = program.example_inputs(3)
        with torch.no_grad():
            assert not torch.allclose(again.network(*inputs), program.network(*inputs))
    for net_name, entry in info["networks"].items():
        net = dict(fresh.named_modules())[net_name]
        if entry["class_path"] is not None:  # a config the file names: build the network from it alone
            module_name, _, cls = entry["class_path"].rpartition(".")
            net = getattr(__import__(module_name, fromlist=[cls]), cls)(**entry["init_args"])
            setattr(fresh, net_name, net)
        safetensors.load_model(net, tmp_path / entry["file"])
    for program, again in zip(programs(module), programs(fresh), strict=True):
        inputs = program.example_inputs(3)
        with torch.no_grad():
            _close(again.network(*inputs), program.network(*inputs))


# ---------------------------------------------------------------------- the example sampler


@pytest.fixture(scope="module")
def exported_diffusion(tmp_path_factory):
    """A tiny class-conditional v-predicting diffusion model (the demo's parameterisation), exported."""
    torch.manual_seed(0)
    module = _diffusion(_unet(), prediction="v").eval()
    randomize(module.net)
    folder = tmp_path_factory.mktemp("diffusion")
    export(module, "torch_export", folder)
    return module, folder


SAMPLERS = {
    "ddim": {"sampler": "ddim", "steps": 3, "eta": 0.5},
    "dpm": {"sampler": "dpm_solver++", "steps": 4},
}


def test_the_example_sampler_reproduces_module_sample_without_lit_genai(exported_diffusion, tmp_path):
    module, folder = exported_diffusion
    n, seed = 4, 5
    # One process for both samplers (importing torch and loading the program take most of the time),
    # with lit_genai unimportable: the script runs on torch alone.
    code = "import runpy, sys; sys.modules['lit_genai'] = None\n"
    for name, options in SAMPLERS.items():
        args = [str(folder), "--n", str(n), "--seed", str(seed), "--guidance-scale", "1.5"]
        args += [arg for key, value in options.items() for arg in (f"--{key}", str(value))]
        args += ["--output", str(tmp_path / f"{name}.png"), "--tensor", str(tmp_path / f"{name}.pt")]
        code += f"sys.argv = {[str(SCRIPT), *args]!r}; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    from PIL import Image

    for name, options in SAMPLERS.items():
        expected = module.sample(
            n,
            cond=torch.arange(n) % K,  # predict's labels
            generator=paradigm.sample_generators(seed, range(n)),
            guidance_scale=1.5,
            **options,
        )
        _close(torch.load(tmp_path / f"{name}.pt"), expected)
        with Image.open(tmp_path / f"{name}.png") as grid:  # 2 x 2 samples of 8 x 8, 2-pixel borders
            assert grid.size == (2 + 2 * (8 + 2), 2 + 2 * (8 + 2)) and grid.mode == "RGB"


# ---------------------------------------------------------------------- the command


def _run_folder(root: Path, model: dict, module: nn.Module, ema: dict | None = None) -> Path:
    """What ``lit-genai fit`` leaves: ``config.yaml`` + ``checkpoints/last.ckpt`` (its weights and, if
    given, an EMA average), written directly so the test needs no training."""
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": model}))
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": {}}
    if ema is not None:
        checkpoint["callbacks"] = {"EMA": {"shadow": ema}}
    torch.save(checkpoint, run / "checkpoints" / "last.ckpt")
    return run


TINY_UNET = dict(base_channels=8, channel_mult=[1], num_res_blocks=1, attention_levels=[], num_groups=4)
TINY_DIFFUSION = {
    "class_path": "lit_genai.diffusion.Diffusion",
    "init_args": {
        "net": {
            "class_path": "lit_genai.nn.UNet",
            "init_args": {"in_channels": 1, "num_classes": K, **TINY_UNET},
        },
        "sample_shape": [1, 8, 8],
        "num_classes": K,
        "num_timesteps": 30,
        "beta_schedule": "cosine",
    },
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny diffusion run whose EMA average differs from its training weights."""
    from lit_genai.api.load import build_module

    module = build_module(TINY_DIFFUSION, "tiny")
    randomize(module.net, seed=0)
    average = {k: v.clone() for k, v in module.net.state_dict().items()}
    randomize(module.net, seed=1)  # the training weights
    for tensor in average.values():
        tensor.mul_(0.5)
    return _run_folder(tmp_path_factory.mktemp("tiny"), TINY_DIFFUSION, module, average), average


def test_the_command_writes_the_program_and_export_json_with_the_ema_weights(tiny_run, capsys):
    run, average = tiny_run
    assert run_cli(["export", "--ckpt", str(run), "--format", "torch_export"]) == 0
    folder = run / "export" / "torch_export"
    assert f"wrote {folder / 'denoiser.pt2'}" in capsys.readouterr().out
    info = json.loads((folder / "export.json").read_text())
    assert info["ema"] is True and info["module"] == "lit_genai.diffusion.module.Diffusion"
    assert info["sampler"]["prediction"] == "eps" and len(info["sampler"]["alphas_cumprod"]) == 30
    assert info["null_label"] == K and info["sampler"]["settings"]["sampler"] == "ddim"
    net = _unet()  # the run's architecture
    net.load_state_dict(average)
    inputs = (torch.randn(2, 1, 8, 8), torch.tensor([0, 29]), torch.tensor([1, K]))
    with torch.no_grad():
        _close(torch.export.load(folder / "denoiser.pt2").module()(*inputs), net.eval()(*inputs))


def test_the_command_writes_safetensors_with_the_networks_config(tiny_run, tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    run, average = tiny_run
    assert (
        run_cli(["export", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--format", "safetensors"]) == 0
    )
    entry = json.loads((run / "export" / "safetensors" / "export.json").read_text())["networks"]["net"]
    assert entry["class_path"] == "lit_genai.nn.UNet" and entry["init_args"]["base_channels"] == 8
    net = _unet()
    safetensors.load_model(net, run / "export" / "safetensors" / entry["file"])
    assert all(torch.equal(net.state_dict()[k], v) for k, v in average.items())
    # --ema false: the training weights
    args = [
        "export",
        "--ckpt",
        str(run),
        "--format",
        "safetensors",
        "--ema",
        "false",
        "--output",
        str(tmp_path),
    ]
    assert run_cli(args) == 0
    assert json.loads((tmp_path / "export.json").read_text())["ema"] is False
    safetensors.load_model(net, tmp_path / entry["file"])
    trained = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(v, trained[f"net.{k}"]) for k, v in net.state_dict().items())


def _one_line_error(args: list[str], capsys) -> str:
    assert run_cli(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lit-genai: error: "), err
    return err[0]


def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, capsys):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "weights.pt")
    line = _one_line_error(["export", "--ckpt", str(tmp_path / "weights.pt"), "--format", "onnx"], capsys)
    assert "not a Lightning checkpoint" in line


GPT_MODEL = {
    "class_path": "lit_genai.ar.NextToken",
    "init_args": {
        "net": {
            "class_path": "lit_genai.nn.transformer.GPT",
            "init_args": dict(vocab_size=10, block_size=16, n_layer=1, n_head=2, n_embd=16),
        },
        "vocab_size": 10,
        "block_size": 16,
        "vocabulary": TEXT,
    },
}


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    """A tiny character-level GPT run."""
    from lit_genai.api.load import build_module

    module = build_module(GPT_MODEL, "gpt")
    randomize(module.net)
    return _run_folder(tmp_path_factory.mktemp("gpt"), GPT_MODEL, module), module


def test_the_command_exports_a_gpts_decode_step(gpt_run, tmp_path):
    run, module = gpt_run
    assert run_cli(["export", "--ckpt", str(run), "--format", "torch_export", "--output", str(tmp_path)]) == 0
    info = json.loads((tmp_path / "export.json").read_text())
    assert info["sampler"]["vocabulary"] == TEXT
    assert [i["name"] for i in info["programs"]["decode_step"]["inputs"]] == ["idx", "input_pos"]
    step = torch.export.load(tmp_path / "decode_step.pt2").module()
    tokens = torch.tensor([[3, 1, 4]])  # (1, 3): fed one per call, the cache keeps the others
    logits = [step(tokens[:, i : i + 1], torch.tensor([i])) for i in range(3)]  # 3 x (1, V)
    with torch.no_grad():
        _close(torch.stack(logits, 1), module.net.eval()(tokens))  # (1, 3, V)


@pytest.mark.parametrize(
    "run, format, says",
    [
        ("gpt_run", "onnx", "a NextToken's program is its one-token decode step"),
        ("tiny_run", "transformers", "--format transformers exports a NextToken model"),
    ],
)
def test_a_format_the_model_does_not_have_is_one_line(run, format, says, request, tmp_path, capsys):
    folder = request.getfixturevalue(run)[0]
    line = _one_line_error(
        ["export", "--ckpt", str(folder), "--format", format, "--output", str(tmp_path)], capsys
    )
    assert says in line
    assert not list(tmp_path.iterdir())  # nothing written, not even a partial file


def test_the_command_writes_a_diffusers_folder(tiny_run, tmp_path):
    pytest.importorskip("diffusers")
    run, _ = tiny_run
    assert run_cli(["export", "--ckpt", str(run), "--format", "diffusers", "--output", str(tmp_path)]) == 0
    assert (tmp_path / "unet" / "config.json").is_file() and (tmp_path / "scheduler").is_dir()


@pytest.mark.slow
def test_the_example_sampler_decodes_a_latent_models_samples(ae_checkpoint, tmp_path):
    torch.manual_seed(0)
    module = GENERATIVE["latent-diffusion-unet"][1](ae_checkpoint)[0].eval()
    randomize(module.net)
    export(module, "torch_export", tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.pt2")) == ["decoder.pt2", "denoiser.pt2"]
    args = [
        str(tmp_path),
        "--n",
        "3",
        "--output",
        str(tmp_path / "grid.png"),
        "--tensor",
        str(tmp_path / "x.pt"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = module.sample(3, cond=torch.arange(3) % K, generator=paradigm.sample_generators(0, range(3)))
    assert expected.shape == (3, 1, 28, 28)
    _close(torch.load(tmp_path / "x.pt"), expected)
