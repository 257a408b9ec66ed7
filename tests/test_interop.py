"""Interop with diffusers and Hugging Face (``lit_genai/export/{diffusers,huggingface,hub}.py``).

What a user relies on: a DDPM exported to diffusers is the same function in ``UNet2DModel`` (outputs
to 1e-5, the same parameter count), its ``DDPMScheduler`` has our alpha_bar, and ``DDPMPipeline`` /
``DDIMPipeline`` draw our samples from the same noise; a GPT exported to transformers gives our
logits in ``GPT2LMHeadModel``, its tokenizer decodes our tokens, and ``load_gpt2`` reads our weights
back; a Hub folder rebuilds the same network and its card carries the run's test results. Models
these libraries cannot hold are refused in one line. Tiny models of ``test_contract.py``.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from test_contract import GENERATIVE, TEXT, K, _gpt, _kl, _unet

from lit_genai.ar import NextToken
from lit_genai.diffusion import EDM, Diffusion, DiffusionSampling
from lit_genai.errors import ConfigError
from lit_genai.nn import UNet
from lit_genai.nn.transformer import GPT


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network in any test: the Hugging Face libraries read local folders and their cache only
    (huggingface_hub reads HF_HUB_OFFLINE at import, so its constant is set too)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        import huggingface_hub
    except ImportError:
        return None
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return huggingface_hub


def _randomise(net: torch.nn.Module, scale: float = 0.2) -> torch.nn.Module:
    """Perturb every weight: zero-initialised output layers and biases would hide a wrong mapping."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * scale)
    return net.eval()


def _one_line(error: pytest.ExceptionInfo, *words: str) -> None:
    message = str(error.value)
    assert "\n" not in message and all(w in message for w in words), message


# ---------------------------------------------------------------------- diffusers


def _deep_unet(classes: int = K) -> UNet:
    """The contract row's UNet with two levels and attention: every block kind diffusers maps."""
    return UNet(
        in_channels=1,
        base_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_levels=(1,),
        dropout=0.0,
        num_groups=4,
        num_classes=classes,
    )


@pytest.mark.parametrize(
    "make_net",
    [_unet, _deep_unet, lambda: _deep_unet(classes=0)],
    ids=["contract-row", "two-levels-attention", "unconditional"],
)
def test_diffusers_unet_is_our_unet(tmp_path, make_net):
    """UNet2DModel.from_pretrained(folder/unet) computes our UNet to 1e-5 (null label included) with
    the same parameter count; DDPMPipeline's model_index.json only for an unconditional model."""
    diffusers = pytest.importorskip("diffusers")
    from lit_genai.export.diffusers import export_diffusers

    net = _randomise(make_net())
    module = Diffusion(net, sample_shape=(1, 8, 8), num_classes=net.num_classes, num_timesteps=30)
    folder = export_diffusers(module, tmp_path / "ddpm")
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    assert sum(p.numel() for p in unet.parameters()) == sum(p.numel() for p in net.parameters())
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 7, 15, 29])
    with torch.no_grad():
        if net.num_classes:
            y = torch.tensor([0, 1, 2, K])  # K: the null label of guidance
            ours, theirs = net(x, t, y), unet(x, t, class_labels=y).sample
        else:
            ours, theirs = net(x, t), unet(x, t).sample
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    assert (folder / "model_index.json").is_file() == (net.num_classes == 0)
    assert "## Use" in (folder / "README.md").read_text()


@pytest.mark.parametrize(("schedule", "T"), [("linear", 1000), ("cosine", 1000), ("sigmoid", 100)])
def test_ddpm_scheduler_has_our_alpha_bar(schedule, T):
    """DDPMScheduler given our betas (trained_betas: our linear schedule is scaled by 1000/T) has our
    alpha_bar, and our prediction, variance and clipping settings."""
    diffusers = pytest.importorskip("diffusers")
    from lit_genai.export.diffusers import scheduler_config

    sampling = DiffusionSampling(variance="beta_tilde", clip_denoised=False)
    module = Diffusion(
        _unet(), (1, 8, 8), K, num_timesteps=T, beta_schedule=schedule, prediction="v", sampling=sampling
    )
    scheduler = diffusers.DDPMScheduler(**scheduler_config(module))
    torch.testing.assert_close(scheduler.alphas_cumprod, module.alpha_bar, atol=1e-6, rtol=1e-4)
    config = scheduler.config
    assert (config.prediction_type, config.variance_type, config.clip_sample) == (
        "v_prediction",
        "fixed_small",
        False,
    )


def test_diffusers_pipelines_draw_our_samples(tmp_path):
    """For the same generator seed DDPMPipeline (T steps) gives our ``sampler: ddpm`` images and a
    DDIMPipeline on the exported scheduler our ``sampler: ddim`` (S dividing T, eta 0, the model
    output recomputed from the clipped x0)."""
    diffusers = pytest.importorskip("diffusers")
    from lit_genai.export.diffusers import export_diffusers

    net = _randomise(_deep_unet(classes=0))
    module = Diffusion(net, sample_shape=(1, 8, 8), num_classes=0, num_timesteps=30, prediction="v")
    folder = export_diffusers(module, tmp_path / "ddpm")
    pipe = diffusers.DDPMPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        batch_size=3, num_inference_steps=30, generator=torch.Generator().manual_seed(0), output_type="pt"
    )
    ours = module.sample(3, generator=torch.Generator().manual_seed(0), sampler="ddpm")
    torch.testing.assert_close(images.images, (ours + 1) / 2, atol=1e-5, rtol=0)  # theirs in [0, 1]

    ddim = diffusers.DDIMPipeline(
        unet=pipe.unet, scheduler=diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    )
    ddim.set_progress_bar_config(disable=True)
    images = ddim(
        batch_size=3,
        num_inference_steps=3,
        eta=0.0,
        use_clipped_model_output=True,  # our DDIM recomputes eps from the clipped x0
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    )
    ours = module.sample(3, generator=torch.Generator().manual_seed(0), sampler="ddim", steps=3, eta=0.0)
    torch.testing.assert_close(images.images, (ours + 1) / 2, atol=1e-5, rtol=0)


def test_diffusers_refuses_in_one_line(tmp_path):
    """A DiT, an EDM and a UNet too narrow for diffusers' timestep embedding: one line naming why."""
    pytest.importorskip("diffusers")
    from lit_genai.export.diffusers import export_diffusers

    dit_module, _ = GENERATIVE["diffusion-dit"][1](None)
    with pytest.raises(ConfigError) as error:
        export_diffusers(dit_module, tmp_path / "a")
    _one_line(error, "DiT", "UNet")
    with pytest.raises(ConfigError) as error:
        export_diffusers(EDM(_unet(), sample_shape=(1, 8, 8), num_classes=K), tmp_path / "b")
    _one_line(error, "EDM", "Diffusion")
    narrow = UNet(
        in_channels=1, base_channels=2, channel_mult=(1,), num_res_blocks=1, attention_levels=(), num_groups=2
    )
    with pytest.raises(ConfigError) as error:
        export_diffusers(Diffusion(narrow, sample_shape=(1, 8, 8), num_timesteps=30), tmp_path / "c")
    _one_line(error, "base_channels=2")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


# ---------------------------------------------------------------------- transformers


def _text_model(bias: bool = False, activation: str = "gelu") -> NextToken:
    """The contract's text row, unconditional (GPT-2 has no class embedding), biases as asked."""
    net = GPT(vocab_size=10, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=bias, activation=activation)
    return NextToken(_randomise(net, 0.05), vocab_size=10, block_size=16, vocabulary=TEXT)


@pytest.mark.parametrize(("bias", "activation"), [(False, "gelu"), (True, "gelu_tanh")])
def test_transformers_gpt2_is_our_gpt(tmp_path, bias, activation):
    """GPT2LMHeadModel.from_pretrained(folder) gives our logits (1e-5); its AutoTokenizer and
    vocabulary.json decode our character ids; load_gpt2(folder) gives our weights back (zero biases
    where ours have none)."""
    transformers = pytest.importorskip("transformers")
    from lit_genai.ar.pretrained import load_gpt2
    from lit_genai.export.huggingface import export_transformers

    module = _text_model(bias, activation)
    folder = export_transformers(module, tmp_path / "gpt2")
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    idx = torch.randint(0, 10, (3, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(idx).logits, module.net(idx), atol=1e-5, rtol=0)

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert tokenizer("abj")["input_ids"] == [0, 1, 9]
    assert tokenizer.decode([9, 0, 3]) == "jad"
    assert json.loads((folder / "vocabulary.json").read_text()) == TEXT

    loaded = load_gpt2(folder).state_dict()
    ours = module.net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in ours.items())
    assert all(not loaded[k].any() for k in set(loaded) - set(ours))  # bias: false -> zeros
    assert bias or set(loaded) - set(ours)


def test_transformers_byte_tokenizer_decodes_utf8(tmp_path):
    """A byte-level text model (vocab 256, no vocabulary) gets a tokenizer whose id b is byte b."""
    transformers = pytest.importorskip("transformers")
    from lit_genai.export.huggingface import export_transformers

    module = NextToken(_gpt(256, 8), vocab_size=256, block_size=8)
    folder = export_transformers(module, tmp_path / "bytes")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    text = "héllo\n wörld"
    assert tokenizer(text)["input_ids"] == list(text.encode("utf-8"))
    assert tokenizer.decode(list(text.encode("utf-8"))) == text


def test_transformers_refuses_in_one_line(tmp_path):
    """Rotary positions, class conditioning, bidirectional attention, another network: one line each."""
    pytest.importorskip("transformers")
    from lit_genai.export.huggingface import export_transformers

    rope = NextToken(GPT(vocab_size=10, block_size=16, n_layer=1, n_head=2, n_embd=16, rope=True), 10, 16)
    cases = [
        (rope, "rope"),
        (GENERATIVE["gpt-text"][1](None)[0], "num_classes"),
        (GENERATIVE["masked-text"][1](None)[0], "NextToken"),  # a MaskedTokens (bidirectional)
        (GENERATIVE["pixelcnn-pixels"][1](None)[0], "GatedPixelCNN"),
    ]
    for module, word in cases:
        with pytest.raises(ConfigError) as error:
            export_transformers(module, tmp_path / "x")
        _one_line(error, word)
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------- the Hub


TEST_JSON = {  # the format lit-genai test writes (callbacks/evaluation.py), shortened
    "checkpoint": "runs/tiny/checkpoints/last.ckpt",
    "metrics": {"test/fid_mnist": 5.01540994644165, "test/loss": 0.11128121614456177},
    "protocol": {"extractor": "mnist", "num_generated": 1000, "reference": "MNIST5k/train"},
}


def test_hub_folder_of_a_loaded_run(tmp_path, offline):
    """A module as ``lit_genai.api.load`` gives it (checkpoint_path in a run folder with config.yaml and
    last.test.json): the folder rebuilds the same network, config.json says what the model is and the
    card carries the test metrics and protocol."""
    pytest.importorskip("huggingface_hub")
    pytest.importorskip("safetensors")
    from lit_genai.export.hub import from_pretrained, save_pretrained

    module, _ = GENERATIVE["diffusion-unet"][1](None)
    _randomise(module.net)
    run = tmp_path / "runs" / "tiny"
    (run / "checkpoints").mkdir(parents=True)
    net_config = {
        "class_path": "lit_genai.nn.UNet",
        "init_args": dict(
            in_channels=1, base_channels=8, channel_mult=[1], num_res_blocks=1, attention_levels=[],
            dropout=0.0, num_groups=4, num_classes=K,
        ),
    }  # fmt: skip
    config = {"model": {"class_path": "lit_genai.diffusion.Diffusion", "init_args": {"net": net_config}}}
    (run / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    (run / "checkpoints" / "last.test.json").write_text(json.dumps(TEST_JSON))
    module.checkpoint_path = str(run / "checkpoints" / "last.ckpt")

    folder = save_pretrained(module, tmp_path / "hub")
    net = from_pretrained(folder)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 20]), torch.tensor([1, K])
    with torch.no_grad():
        torch.testing.assert_close(net(x, t, y), module.net(x, t, y), atol=0, rtol=0)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["class_path"] == "lit_genai.nn.UNet" and saved["init_args"] == net_config["init_args"]
    assert saved["model"]["hyperparameters"]["num_timesteps"] == 30
    assert saved["model"]["sampling"]["guidance_scale"] == 1.0
    card = offline.ModelCard.load(folder / "README.md")
    assert card.data.library_name == "lit_genai"
    for words in (
        "Diffusion",
        "fid_mnist",
        "5.015",
        "MNIST5k/train",
        "guidance_scale",
        "samples of shape (1, 8, 8)",
    ):
        assert words in card.text, words

    shutil.rmtree(run)  # the folder alone suffices
    assert from_pretrained(str(folder)).base_channels == 8


def test_hub_networks_without_a_run(tmp_path, offline):
    """A network that keeps its init arguments (the KL decoder), a tied GPT given its config, and one
    line for a network whose config is unknown, a wrong config and a repository not in the cache."""
    pytest.importorskip("huggingface_hub")
    pytest.importorskip("safetensors")
    from lit_genai.export.hub import from_pretrained, save_pretrained

    kl = _kl()
    folder = save_pretrained(kl, tmp_path / "decoder", network="decoder", metrics=TEST_JSON)
    decoder = from_pretrained(folder)
    z = torch.randn(2, 2, 4, 4)
    torch.testing.assert_close(decoder(z), kl.decoder.eval()(z))
    assert "fid_mnist" in (folder / "README.md").read_text()

    gpt = _gpt(10, 16)
    gpt_config = {
        "class_path": "lit_genai.nn.transformer.GPT",
        "init_args": dict(vocab_size=10, block_size=16, n_layer=1, n_head=2, n_embd=16),
    }
    loaded = from_pretrained(save_pretrained(gpt, tmp_path / "gpt", config=gpt_config))
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # still tied
    idx = torch.randint(0, 10, (2, 16))
    torch.testing.assert_close(loaded(idx), gpt.eval()(idx))

    with pytest.raises(ConfigError) as error:
        save_pretrained(_unet(), tmp_path / "unet")
    _one_line(error, "UNet", "config")
    with pytest.raises(ConfigError) as error:
        save_pretrained(
            gpt,
            tmp_path / "bad",
            config={**gpt_config, "init_args": {**gpt_config["init_args"], "n_embd": 8}},
        )
    _one_line(error, "differ")
    with pytest.raises(ConfigError) as error:
        from_pretrained("nobody/no-such-model")
    _one_line(error, "nobody/no-such-model")
