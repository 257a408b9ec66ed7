"""MaskGIT with a text context: GPT cross-attention, caption dropout, guidance on captions, a frozen
text encoder, a tiny fit, and captioned image tokens (``nn.transformer``, ``masked.module``,
``data.tokens``).

Checked here: a GPT without a text encoder is unchanged bit for bit (state-dict names, outputs and
cached decoding: reference numbers taken from the GPT before text conditioning existed); an
all-padding context equals no context; caption dropout feeds the empty (null) caption; guidance
w = 0 is conditional decoding and w > 0 runs the empty caption in the same batch; a frozen text
encoder gets no gradient and is not optimised; a short fit on captioned token batches runs and
samples follow their captions; ImageTokens over captioned images caches and yields the captions.
"""

from __future__ import annotations

import functools
import hashlib

import pytest
import torch
from helpers import quiet_trainer
from lightning.pytorch import LightningDataModule
from test_text2image import WORDS, _encoder, _perturb  # the caption words, encoder and perturbation
from torch.utils.data import DataLoader

from lit_genai.data.shapes import CaptionedShapes
from lit_genai.data.tokens import CaptionedTokens, ImageTokens
from lit_genai.errors import ConfigError
from lit_genai.masked.module import MaskedSampling, MaskedTokens
from lit_genai.masked.sampling import maskgit_decode
from lit_genai.nn.autoencoder import Decoder, Encoder
from lit_genai.nn.transformer import GPT
from lit_genai.nn.vq import VectorQuantizer
from lit_genai.vae.vqvae import VQVAE

V, N = 8, 16  # the data's token ids, tokens per sequence


def _gpt(text: bool = True, frozen: bool = False, **kwargs) -> GPT:
    torch.manual_seed(0)
    args = dict(vocab_size=V + 1, block_size=N, n_layer=2, n_head=2, n_embd=32, causal=False)
    return GPT(**{**args, **kwargs}, text_encoder=_encoder(frozen) if text else None)


def _module(frozen: bool = False, **kwargs) -> MaskedTokens:
    kwargs = {"optimizer": functools.partial(torch.optim.AdamW, lr=1e-2), **kwargs}
    return MaskedTokens(_gpt(frozen=frozen), vocab_size=V, block_size=N, text_vocabulary=WORDS, **kwargs)


# (sha256 of the state-dict names joined by ",", entries, sum of the logits, first logits, sum of one
# cached decoding step) of a causal GPT with rope and biases, built with torch.manual_seed(0) and
# moved by _perturb, measured with the GPT of before text conditioning.
REFERENCE = ("c1466c947dd468d5", 29, 12.780368, [-0.454349, 0.079061, 0.234231], 2.078342)


def test_gpt_without_text_encoder_is_unchanged():
    torch.manual_seed(0)
    net = GPT(vocab_size=13, block_size=10, n_layer=2, n_head=2, n_embd=16, bias=True, rope=True)
    names = list(net.state_dict())
    digest, entries, total, first, step_total = REFERENCE
    assert hashlib.sha256(",".join(names).encode()).hexdigest()[:16] == digest and len(names) == entries
    _perturb(net)
    idx = torch.randint(0, 13, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = net(idx)
        cache = net.init_cache(2)
        net(idx[:, :4], cache=cache)
        step = net(idx[:, 4:5], cache=cache)  # the KV cache path is unchanged too
    assert full.double().sum().item() == pytest.approx(total, abs=1e-5)
    assert full.flatten()[:3].tolist() == pytest.approx(first, abs=1e-6)
    assert step.double().sum().item() == pytest.approx(step_total, abs=1e-5)
    assert net.text_encoder is None and all(block.cross is None for block in net.transformer.h)


def test_all_padding_context_equals_no_context():
    net = _perturb(_gpt(num_classes=3))
    assert {"text_pool.proj.weight", "transformer.h.1.cross.proj.weight"} <= set(net.state_dict())
    idx, y = torch.randint(0, V + 1, (2, N)), torch.tensor([0, 3])
    empty = net.text_encoder(torch.zeros(2, 6, dtype=torch.long), torch.zeros(2, 6, dtype=torch.bool))
    ids = torch.tensor([[1, 2, 4, 0, 0, 0], [3, 5, 0, 0, 0, 0]])
    with torch.no_grad():
        assert torch.equal(net(idx, y, context=empty), net(idx, y))
        captioned = net(idx, y, context=net.text_encoder(ids, ids != 0))
    assert not torch.allclose(captioned, net(idx, y))  # the caption does reach the logits
    # fresh cross-attention and pooled projections are zero: a new text model starts as the plain GPT
    fresh = _gpt()
    with torch.no_grad():
        assert torch.equal(fresh(idx, context=fresh.text_encoder(ids, ids != 0)), fresh(idx))
    with pytest.raises(ValueError, match="no text_encoder"):
        _gpt(text=False)(idx, context=empty)


def test_caption_dropout_gives_the_null_caption():
    module = _module(p_uncond={"text": 1.0})
    assert module.conditions == ("text",) and module._dropout == {"text": 1.0}
    captions = ["a red circle", "blue square"]
    dropped = module._context(captions, torch.device("cpu"), train=True)
    null = module.text.null(2, torch.device("cpu"))
    assert not dropped.mask.any() and all(torch.equal(a, b) for a, b in zip(dropped, null, strict=True))
    kept = module._context(captions, torch.device("cpu"), train=False)  # evaluation never drops
    assert kept.mask.sum(1).tolist() == [3, 2]
    assert _module(p_uncond=0.1)._dropout == {"text": 0.1}  # one float covers the text condition


def test_guidance_zero_is_conditional_decoding_and_w_batches_the_empty_caption():
    module = _module()
    _perturb(module.net)
    captions = ["a red circle", "blue square", "a square"]
    context = module.text.encode(*module.text.tokenize(captions, torch.device("cpu")))

    def generators():
        return [torch.Generator().manual_seed(i) for i in range(3)]

    start = torch.full((3, N), V)
    plain = maskgit_decode(
        lambda idx, _: module.net(idx, context=context)[..., :V],
        start,
        mask_id=V,
        steps=3,
        generator=generators(),
    )
    sampled = module.sample(3, cond={"text": captions}, guidance=0.0, steps=3, generator=generators())
    assert torch.equal(sampled, plain)
    assert torch.equal(module.sample(3, caption=captions, steps=3, generator=generators()), plain)

    seen = []
    forward = module.net.forward

    def recording(idx, cond=None, context=None):
        seen.append(context.mask.any(1).tolist())
        return forward(idx, cond, context=context)

    module.net.forward = recording
    guided = module.sample(3, cond={"text": captions}, guidance=2.0, steps=3, generator=generators())
    assert seen[0] == [True] * 3 + [False] * 3  # one pass of 2n rows: the captions, then the empty ones
    assert guided.shape == (3, N) and not torch.equal(guided, plain)
    seen.clear()
    module.sample(2, guidance=2.0, steps=2)  # no caption at all: guidance is void, one pass of n
    assert seen[0] == [False, False]


def test_captions_of_predict_and_one_line_errors():
    module = _module()
    assert module.prompts([0, 1]) is None  # no caption set: predict draws the empty caption
    module.sampling = module.sampling.replace(caption=["a red circle", "blue square"])
    assert module.prompts([0, 1, 5]) == ["a red circle", "blue square", "blue square"]
    with pytest.raises(ConfigError, match="does not know: star"):
        module.sample(1, cond={"text": ["a red star"]}, steps=2)
    with pytest.raises(ConfigError, match="2 captions for 1 samples"):
        module.sample(1, cond={"text": ["a red circle", "a square"]}, steps=2)
    with pytest.raises(ConfigError, match="carry no captions"):
        module.training_step((torch.zeros(2, N, dtype=torch.long), torch.zeros(2, dtype=torch.long)), 0)
    plain = MaskedTokens(_gpt(text=False), vocab_size=V, block_size=N)
    with pytest.raises(ConfigError, match="caption needs a text-conditional model"):
        plain.sample(1, caption="a red circle", steps=2)
    with pytest.raises(ConfigError, match="unknown condition"):
        plain.sample(1, cond={"text": ["a red circle"]}, steps=2)
    assert MaskedSampling().caption is None


def test_frozen_text_encoder_gets_no_gradient_and_is_not_optimised():
    module = _module(frozen=True)
    encoder = module.net.text_encoder
    module.net.train()
    assert not encoder.training  # frozen: always in eval mode
    batch = (
        torch.randint(0, V, (2, N)),
        torch.zeros(2, 5, dtype=torch.long),
        ["a red circle", "blue square"],
    )
    module.training_step(batch, 0).backward()
    assert all(p.grad is None for p in encoder.parameters())
    optimised = {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in encoder.parameters()}
    assert optimised == {id(p) for n, p in module.net.named_parameters() if not n.startswith("text_encoder.")}

    joint = _module()  # trained jointly: in the optimiser, and it learns
    optimised = {id(p) for g in joint.configure_optimizers().param_groups for p in g["params"]}
    assert {id(p) for p in joint.net.text_encoder.parameters()} <= optimised
    _perturb(joint.net).train()  # the zero projections otherwise block the encoder's gradient
    joint.training_step(batch, 0).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in joint.net.text_encoder.parameters())


class CaptionedTokenData(LightningDataModule):
    """ImageTokens-like batches (tokens (B, N), attrs (B, 2), captions): the colour word of the
    caption decides the first half of the sequence (red: token 1, blue: token 2), the shape word
    the second half (circle: 3, square: 4)."""

    vocab_size, block_size, num_classes = V, N, 0
    conditions, text_vocabulary = ("text",), WORDS

    def __init__(self, n: int = 256) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        attrs = torch.randint(0, 2, (n, 2), generator=g)  # (n, 2): colour, shape
        tokens = torch.cat([(1 + attrs[:, :1]).expand(n, N // 2), (3 + attrs[:, 1:]).expand(n, N // 2)], 1)
        captions = [f"a {('red', 'blue')[c]} {('circle', 'square')[s]}" for c, s in attrs.tolist()]
        self.data = CaptionedTokens(tokens, attrs, captions)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=32, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=64)


def test_tiny_fit_on_captioned_tokens_follows_the_captions(tmp_path):
    module = _module(p_uncond=0.1, sampling=MaskedSampling(steps=4, temperature=0.0, guidance=1.0))
    trainer = quiet_trainer(tmp_path, max_steps=60, limit_val_batches=1, check_val_every_n_epoch=1)
    trainer.fit(module, datamodule=CaptionedTokenData())
    assert trainer.callback_metrics["val/loss"] < 0.5
    captions = ["a red circle", "a blue square", "a blue circle"]
    out = module.sample(3, cond={"text": captions}, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, N)
    expected = torch.tensor([[1] * 8 + [3] * 8, [2] * 8 + [4] * 8, [2] * 8 + [3] * 8])
    assert (out == expected).float().mean() > 0.9


def _tiny_tokenizer(folder, data) -> str:
    torch.manual_seed(0)
    kw = dict(
        image_size=16, latent_channels=4, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=4
    )
    model = VQVAE(
        Encoder(3, **kw),
        Decoder(3, **kw),
        VectorQuantizer(16, 4),
        sample_shape=(3, 16, 16),
        optimizer=lambda params: torch.optim.Adam(params, lr=3e-3),
    )
    trainer = quiet_trainer(folder, max_steps=2, limit_val_batches=1)
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(folder / "tokenizer.ckpt")
    return str(folder / "tokenizer.ckpt")


def test_image_tokens_of_captioned_images_keep_attributes_and_captions(tmp_path):
    def shapes():
        return CaptionedShapes(
            image_size=16, train_size=64, val_size=32, test_size=32, held_out_size=8, batch_size=16
        )

    tokenizer = _tiny_tokenizer(tmp_path, shapes())
    data = ImageTokens(shapes(), tokenizer, batch_size=8, cache_dir=str(tmp_path / "cache"))
    images = data.images
    assert data.conditions == ("text",) and data.text_vocabulary == images.text_vocabulary
    assert data.attribute_names == images.attribute_names and data.attribute_values == images.attribute_values
    data.setup("fit")
    tokens, attrs, captions = next(iter(data.val_dataloader()))
    assert tokens.shape == (8, 16) and attrs.shape == (8, len(images.attribute_names))
    assert torch.equal(attrs, images.val_set.attributes[:8])
    assert list(captions) == images.val_set.captions[:8]
    again = ImageTokens(shapes(), tokenizer, batch_size=8, cache_dir=str(tmp_path / "cache"))
    again.setup("fit")  # read back from the cache, captions included
    assert not again.encoded and again.train_set[3][2] == images.train_set.captions[3]
