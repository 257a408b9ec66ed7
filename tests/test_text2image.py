"""Text-to-image diffusion: the text condition, cross-attention and guidance on captions
(docs/architecture.md, "Conditions"; ``lit_genai.text_condition``, ``nn.cross_attention``).

Checked here: networks without a text encoder are unchanged bit for bit (parameters, initialisation,
outputs: reference numbers taken before text conditioning existed); an all-padding context equals no
context; caption dropout gives the empty (null) caption; guidance with w = 0 is conditional sampling
and w > 0 is eq. 6 of Ho & Salimans over the empty caption; a frozen text encoder gets no gradient
and is not optimised; prompts are per sample and a word the encoder does not know is one line.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_genai.diffusion import EDM, Diffusion, DiffusionSampling, FlowMatching
from lit_genai.errors import ConfigError
from lit_genai.nn import UNet
from lit_genai.nn.cross_attention import TextContext
from lit_genai.nn.dit import DiT
from lit_genai.nn.text_encoder import TextEncoder
from lit_genai.nn.transformer import GPT
from lit_genai.text_condition import CaptionTokenizer, TextCondition, prompts_for

WORDS = ["a", "red", "blue", "circle", "square", "on", "background"]


def _encoder(frozen: bool = False) -> TextEncoder:
    return TextEncoder(vocab_size=len(WORDS) + 1, max_length=6, n_layer=1, n_head=2, n_embd=16, frozen=frozen)


def _unet(text: bool = True, classes: int = 0, frozen: bool = False) -> UNet:
    return UNet(
        3,
        base_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_levels=(1,),
        num_groups=4,
        num_classes=classes,
        text_encoder=_encoder(frozen) if text else None,
        cross_attention_levels=(0, 1) if text else (),
        cross_attention_heads=2,
    )


def _dit(text: bool = True) -> DiT:
    return DiT(
        in_channels=3,
        image_size=8,
        patch_size=2,
        hidden_size=16,
        depth=2,
        num_heads=2,
        text_encoder=_encoder() if text else None,
    )


def _perturb(net: nn.Module, seed: int = 5) -> nn.Module:
    """Every parameter moved off its (often zero) initial value, so outputs depend on every layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net.eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([3, 7]), torch.tensor([0, 2])
    return x, t, y, torch.randint(0, 10, (2, 6))


# (state-dict entries, sum of the initial weights, output sum, first outputs) of nets built with
# torch.manual_seed(0) and moved by _perturb, measured before text conditioning was added.
REFERENCE = {
    "unet": (145, 331.218104, 10.176657, [0.371317, 0.558306, 0.427956]),
    "unet0": (144, 334.378032, 6.411514, [-0.294193, -0.165753, 0.018447]),
    "dit": (31, 10.994047, 0.20614, [0.292436, 0.022575, 0.329608]),
    "gpt": (17, 79.107654, 5.455776, [0.148395, 0.28586, 0.364378]),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_networks_without_text_are_unchanged(name):
    x, t, y, idx = _inputs()
    make, args = {
        "unet": (lambda: _unet(text=False, classes=3), (x, t, y)),
        "unet0": (lambda: _unet(text=False), (x, t)),
        "dit": (
            lambda: DiT(
                in_channels=3, image_size=8, patch_size=2, hidden_size=16, depth=2, num_heads=2, num_classes=3
            ),
            (x, t, y),
        ),
        "gpt": (
            lambda: GPT(
                vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, causal=False, num_classes=3
            ),
            (idx, y),
        ),
    }[name]
    torch.manual_seed(0)
    net = make()
    entries, init, total, first = REFERENCE[name]
    assert len(net.state_dict()) == entries
    assert sum(p.double().sum() for p in net.state_dict().values()).item() == pytest.approx(init, abs=1e-5)
    with torch.no_grad():
        out = _perturb(net)(*args)
    assert out.double().sum().item() == pytest.approx(total, abs=1e-5)
    assert out.flatten()[:3].tolist() == pytest.approx(first, abs=1e-6)


@pytest.mark.parametrize("make", [_unet, _dit], ids=["unet", "dit"])
def test_all_padding_context_equals_no_context(make):
    torch.manual_seed(0)
    net = _perturb(make())
    x, t, _, _ = _inputs()
    empty = net.text_encoder(torch.zeros(2, 6, dtype=torch.long), torch.zeros(2, 6, dtype=torch.bool))
    assert not empty.mask.any() and torch.equal(empty.pooled, torch.zeros_like(empty.pooled))
    with torch.no_grad():
        assert torch.equal(net(x, t, context=empty), net(x, t))
        ids, mask = CaptionTokenizer(WORDS, 6)(["a red circle", "blue square"])
        captioned = net(x, t, context=net.text_encoder(ids, mask))
    assert not torch.allclose(captioned, net(x, t))  # the caption does reach the output


def test_tokenizer_words_bytes_and_one_line_errors():
    ids, mask = CaptionTokenizer(WORDS, 6)(["A red circle, on blue background", ""])
    assert ids[0, :6].tolist() == [1, 2, 4, 6, 3, 7] and mask[0].all() and not mask[1].any()
    byte_ids, _ = CaptionTokenizer(None, 8)(["ab"])
    assert byte_ids[0, :3].tolist() == [ord("a") + 1, ord("b") + 1, 0]
    with pytest.raises(ConfigError, match="does not know: purple") as error:
        CaptionTokenizer(WORDS, 6)(["a purple circle"])
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="max_length=6"):
        CaptionTokenizer(WORDS, 6)(["a red circle on a blue background"])
    with pytest.raises(ConfigError, match="vocab_size=4 but the captions need 8"):
        TextCondition(TextEncoder(vocab_size=4, max_length=6, n_layer=1, n_head=2, n_embd=16), WORDS)


def test_caption_dropout_gives_the_null_caption():
    text = TextCondition(_encoder(), WORDS)
    ids, real = text.tokenize(["a red circle", "blue square", "a square", "red"], torch.device("cpu"))
    dropped, mask = text.drop(ids, real, {"text": 1.0})
    assert not dropped.any() and not mask.any()
    null = text.null(4, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(text.encode(dropped, mask), null, strict=True))
    kept, _ = text.drop(ids, real, {"text": 0.0})
    assert torch.equal(kept, ids)
    torch.manual_seed(0)
    some, _ = text.drop(ids.repeat(100, 1), real.repeat(100, 1), {"text": 0.1})
    share = (~some.bool().any(1)).float().mean().item()
    assert 0.03 < share < 0.2  # about 10% of the captions become empty


def _module(cls=Diffusion, frozen: bool = False, **kwargs):
    torch.manual_seed(0)
    extra = {"num_timesteps": 50, "beta_schedule": "cosine"} if cls is Diffusion else {}
    module = cls(_unet(frozen=frozen), sample_shape=(3, 8, 8), text_vocabulary=WORDS, **extra, **kwargs)
    _perturb(module.net)
    return module


def test_guidance_zero_is_conditional_and_w_is_eq6():
    module = _module()
    x, t, _, _ = _inputs()
    context = module.text.encode(*module.text.tokenize(["a red circle", "blue square"], torch.device("cpu")))
    null = module.text.null(2, torch.device("cpu"))
    with torch.no_grad():
        conditional = module.net(x, t, context=context)
        unconditional = module.net(x, t, context=null)
        assert torch.equal(module._model_fn(None, 0.0, context)(x, t), conditional)
        guided = module._model_fn(None, 2.0, context)(x, t)
    torch.testing.assert_close(
        guided, unconditional + 3.0 * (conditional - unconditional), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("cls", [Diffusion, EDM, FlowMatching])
def test_samples_follow_their_captions_and_prompts(cls):
    module = _module(cls)
    assert module.conditions == ("text",)
    captions = ["a red circle", "blue square", "a square"]

    def draw(**kwargs):
        generators = [torch.Generator().manual_seed(i) for i in range(3)]
        return module.sample(3, generator=generators, steps=2, guidance_scale=1.0, **kwargs)

    by_cond = draw(cond={"text": captions})
    assert torch.equal(by_cond, draw(prompt=captions))  # the setting is the fallback caption
    assert torch.equal(
        draw(prompt=["a red circle", "blue square"])[2], draw(cond={"text": ["a red circle"] * 3})[2]
    )
    assert not torch.equal(by_cond, draw())  # the empty caption differs
    assert module.prompts([0, 1, 5]) is None  # no prompt set: predict draws the empty caption
    module.sampling = module.sampling.replace(prompt=["a red circle", "blue square"])
    assert module.prompts([0, 1, 5]) == ["a red circle", "blue square", "blue square"]
    with pytest.raises(ConfigError, match="does not know: star"):
        module.sample(1, cond={"text": ["a red star"]}, steps=2)


def test_prompt_needs_a_text_model():
    module = Diffusion(_unet(text=False), sample_shape=(3, 8, 8), num_timesteps=50, beta_schedule="cosine")
    with pytest.raises(ConfigError, match="needs a text-conditional model"):
        module.sample(1, prompt="a red circle", steps=2)
    with pytest.raises(ConfigError, match="unknown condition"):
        module.sample(1, cond={"text": ["a red circle"]}, steps=2)
    assert prompts_for("x", [0, 3]) == ["x", "x"] and prompts_for(None, [0]) is None


def test_frozen_text_encoder_gets_no_gradient_and_is_not_optimised():
    module = _module(frozen=True, optimizer=torch.optim.SGD)
    encoder = module.net.text_encoder
    module.net.train()
    assert not encoder.training  # frozen: always in eval mode
    batch = (torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), ["a red circle", "blue square"])
    module.training_step(batch, 0).backward()
    assert all(p.grad is None for p in encoder.parameters())
    optimised = {id(p) for group in module.configure_optimizers().param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in encoder.parameters()}
    assert optimised == {id(p) for n, p in module.net.named_parameters() if not n.startswith("text_encoder.")}

    joint = _module(optimizer=torch.optim.SGD)  # trained jointly: in the optimiser, and it learns
    groups = joint.configure_optimizers().param_groups
    assert {id(p) for p in joint.net.text_encoder.parameters()} <= {
        id(p) for g in groups for p in g["params"]
    }
    joint.training_step(batch, 0).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in joint.net.text_encoder.parameters())


def test_training_batches_need_captions():
    module = _module()
    with pytest.raises(ConfigError, match="carry no captions"):
        module.training_step((torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long)), 0)


def test_text_context_helpers():
    ctx = TextContext(torch.ones(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 4))
    assert ctx.repeat(2).tokens.shape == (4, 3, 4)
    assert TextContext.cat([ctx, ctx]).mask.shape == (4, 3)
    net = _unet(text=False)
    with pytest.raises(ValueError, match="no text_encoder"):
        net(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), context=ctx)


def test_settings_default_has_no_prompt():
    assert DiffusionSampling().prompt is None
