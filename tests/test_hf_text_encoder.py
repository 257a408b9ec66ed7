"""``nn.hf_text_encoder.HFTextEncoder``: a frozen Hugging Face CLIP / T5 text encoder from a local folder.

No download: each folder is a tiny random model (hidden 32, 2 layers, 2 heads) saved by
``save_pretrained`` with a word-level tokenizer built here from the ``tokenizers`` package. The CLIP
one pads with EOS and adds BOS/EOS, as Stable Diffusion's CLIP tokenizer; the T5 one adds EOS only
and pads with id 0, as T5's.
"""

import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_CLI_TRAINER, run_cli
from test_cli import DEMO, TINY
from torch import nn

from lit_genai.errors import ConfigError

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402  (comes with transformers)

from lit_genai.nn.hf_text_encoder import HFTextEncoder  # noqa: E402

WORDS = "a small large red green blue circle square star on the top left right background".split()
SPECIAL = ["<pad>", "<unk>", "<bos>", "<eos>"]  # ids 0..3
VOCAB = {w: i for i, w in enumerate(SPECIAL + WORDS)}
BOS, EOS = VOCAB["<bos>"], VOCAB["<eos>"]
CAPTIONS = ["a small red circle on the blue background", "", "green star top left", "zebra", "   "]
KINDS = ("clip", "t5")


def _tokenizer(kind: str):
    """A word-level fast tokenizer: CLIP-like ("<bos> words <eos>", padded with EOS) or T5-like
    ("words <eos>", padded with <pad> = 0)."""
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    template = "<bos> $A <eos>" if kind == "clip" else "$A <eos>"
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[("<bos>", BOS), ("<eos>", EOS)]
    )
    pad = "<eos>" if kind == "clip" else "<pad>"
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token=pad, unk_token="<unk>",
        model_max_length=12,
    )  # fmt: skip


def _model(kind: str):
    torch.manual_seed(0)
    if kind == "clip":
        config = transformers.CLIPTextConfig(
            vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=16, bos_token_id=BOS, eos_token_id=EOS,
            pad_token_id=EOS,
        )  # fmt: skip
        return transformers.CLIPTextModel(config)
    config = transformers.T5Config(
        vocab_size=len(VOCAB), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
        pad_token_id=0, eos_token_id=EOS, decoder_start_token_id=0,
    )  # fmt: skip
    return transformers.T5EncoderModel(config)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{kind: a folder holding the tiny model and its tokenizer}."""
    root = tmp_path_factory.mktemp("hf")
    for kind in KINDS:
        _model(kind).save_pretrained(root / kind)
        _tokenizer(kind).save_pretrained(root / kind)
    return {kind: root / kind for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_tokenize_and_forward_shapes_and_attributes(folders, kind):
    encoder = HFTextEncoder(str(folders[kind]))
    assert encoder.kind == kind  # auto: from config.json's model_type
    assert (encoder.width, encoder.max_length, encoder.vocab_size) == (32, 12, len(VOCAB))
    ids, mask = encoder.tokenize(CAPTIONS)
    assert ids.shape == mask.shape == (len(CAPTIONS), 12)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    context = encoder(ids, mask)
    assert context.tokens.shape == (len(CAPTIONS), 12, 32) and context.pooled.shape == (len(CAPTIONS), 32)
    assert torch.equal(context.mask, mask)
    assert HFTextEncoder(str(folders[kind]), max_length=6).tokenize(CAPTIONS)[0].shape == (len(CAPTIONS), 6)


@pytest.mark.parametrize("kind", KINDS)
def test_the_empty_caption_is_no_context_and_padding_is_zero(folders, kind):
    encoder = HFTextEncoder(str(folders[kind]))
    ids, mask = encoder.tokenize(CAPTIONS)
    first = [BOS, VOCAB["a"]] if kind == "clip" else [VOCAB["a"]]
    assert ids[0, : len(first)].tolist() == first and ids[3].tolist()[: 3 if kind == "clip" else 2] == (
        [BOS, 1, EOS] if kind == "clip" else [1, EOS]
    )  # an unknown word is the tokenizer's <unk>, not an error
    for empty in (1, 4):  # "" and spaces: no BOS/EOS, all padding
        assert not mask[empty].any() and not ids[empty].any()
    assert torch.equal(ids != 0, mask)  # padding is id 0 (text_condition's convention), not CLIP's EOS
    context = encoder(ids, mask)
    assert torch.isfinite(context.tokens).all() and torch.isfinite(context.pooled).all()
    assert not context.tokens[~mask].any()  # 0 at padding
    assert not context.pooled[[1, 4]].any() and context.pooled[[0, 2, 3]].abs().amin(1).gt(0).all()


@pytest.mark.parametrize("kind", KINDS)
def test_frozen_no_gradient_and_always_eval(folders, kind):
    encoder = HFTextEncoder(str(folders[kind]))
    assert encoder.frozen and not any(p.requires_grad for p in encoder.parameters())
    wrapper = nn.ModuleDict({"text_encoder": encoder, "head": nn.Linear(32, 1)}).train()
    assert not encoder.training and not any(m.training for m in encoder.modules())
    assert wrapper["head"].training
    context = encoder(*encoder.tokenize(CAPTIONS[:3]))
    loss = wrapper["head"](context.tokens).sum() + wrapper["head"](context.pooled).sum()
    loss.backward()
    assert all(p.grad is None for p in encoder.parameters())
    assert wrapper["head"].weight.grad is not None


@pytest.mark.parametrize("layer", ["last", "penultimate"])
@pytest.mark.parametrize("kind", KINDS)
def test_equals_the_transformers_model_on_its_own_ids(folders, kind, layer):
    """The context is the transformers model's output on the tokenizer's own ids (CLIP: EOS padding),
    at every real token; pooled is CLIP's pooler output, or T5's mean over real tokens."""
    encoder = HFTextEncoder(str(folders[kind]), layer=layer)
    captions = [c for c in CAPTIONS if c.strip()]
    model_class = transformers.CLIPTextModel if kind == "clip" else transformers.T5EncoderModel
    model = model_class.from_pretrained(folders[kind], local_files_only=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folders[kind], local_files_only=True)
    batch = tokenizer(captions, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    expected = out.last_hidden_state
    if layer == "penultimate":
        norm = model.final_layer_norm if kind == "clip" else model.encoder.final_layer_norm
        expected = norm(out.hidden_states[-2])
        assert not torch.allclose(expected, out.last_hidden_state, atol=1e-3)
    mask = batch["attention_mask"].bool()
    context = encoder(*encoder.tokenize(captions))
    assert torch.equal(context.mask, mask)
    torch.testing.assert_close(context.tokens[mask], expected[mask], atol=1e-5, rtol=1e-5)
    if kind == "clip":
        torch.testing.assert_close(context.pooled, out.pooler_output, atol=1e-5, rtol=1e-5)
    else:
        mean = (expected * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        torch.testing.assert_close(context.pooled, mean, atol=1e-5, rtol=1e-5)


def test_weights_are_in_the_state_dict_and_the_tokenizer_is_not(folders):
    encoder = HFTextEncoder(str(folders["clip"]))
    state = encoder.state_dict()
    assert state and all(k.startswith("model.") for k in state)
    assert sum(v.numel() for v in state.values()) == sum(p.numel() for p in encoder.parameters())


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_bad_folders_are_one_line(folders, tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as error:
        HFTextEncoder(str(tmp_path / "missing"))
    assert "is not a folder" in _one_line(error)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as error:
        HFTextEncoder(str(tmp_path / "empty"))
    assert "no config.json" in _one_line(error)
    _model("t5").config.save_pretrained(tmp_path / "no_weights")
    with pytest.raises(ConfigError) as error:
        HFTextEncoder(str(tmp_path / "no_weights"))
    assert "no weights" in _one_line(error)
    with pytest.raises(ConfigError) as error:
        HFTextEncoder(str(folders["t5"]), kind="clip")
    assert "holds a 't5' model, not a CLIP text encoder" in _one_line(error)
    with pytest.raises(ConfigError) as error:
        HFTextEncoder(str(folders["clip"]), max_length=40)
    assert "max_length=40 must be at least 2 and at most 16" in _one_line(error)
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(ConfigError) as error:
        HFTextEncoder(str(folders["clip"]))
    assert _one_line(error) == "HFTextEncoder needs the transformers package: pip install 'lit_genai[hf]'"


def test_a_pipeline_folder_reads_text_encoder_and_tokenizer(folders, tmp_path):
    """A diffusers pipeline folder (Stable Diffusion's layout): text_encoder/ and tokenizer/."""
    _model("clip").save_pretrained(tmp_path / "pipeline" / "text_encoder")
    _tokenizer("clip").save_pretrained(tmp_path / "pipeline" / "tokenizer")
    encoder = HFTextEncoder(str(tmp_path / "pipeline"), kind="clip")
    reference = HFTextEncoder(str(folders["clip"]))
    ids, mask = encoder.tokenize(CAPTIONS)
    torch.testing.assert_close(encoder(ids, mask).tokens, reference(ids, mask).tokens)


def test_max_length_defaults_to_the_tokenizers_at_most_77(tmp_path):
    """T5's tokenizer allows 512 tokens; the encoder tokenizes to 77, as Stable Diffusion's CLIP."""
    _model("t5").save_pretrained(tmp_path / "t5")
    tokenizer = _tokenizer("t5")
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(tmp_path / "t5")
    encoder = HFTextEncoder(str(tmp_path / "t5"))
    assert encoder.max_length == 77 and encoder.tokenize(["a " * 100])[1].all()  # truncated to 77


def test_class_path_instantiation(folders):
    """The YAML form: a ``class_path`` under an ``nn.Module`` argument, as a network's ``text_encoder``."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--text_encoder", type=nn.Module)
    spec = {
        "class_path": "lit_genai.nn.hf_text_encoder.HFTextEncoder",
        "init_args": {"path": str(folders["t5"]), "layer": "penultimate"},
    }
    config = parser.parse_object({"text_encoder": spec})
    encoder = parser.instantiate_classes(config).text_encoder
    assert isinstance(encoder, HFTextEncoder) and (encoder.kind, encoder.layer) == ("t5", "penultimate")
    assert "penultimate" in parser.dump(config)


def test_a_missing_folder_through_the_cli_is_one_line(tmp_path, capsys):
    import yaml

    trainer = {**TINY_CLI_TRAINER, "default_root_dir": str(tmp_path / "run")}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "trainer": trainer}))
    encoder = "--model.net.init_args.text_encoder"
    args = ["fit", "--config", DEMO, "--config", str(tmp_path / "tiny.yaml")]
    args += [f"{encoder}.class_path", "lit_genai.nn.hf_text_encoder.HFTextEncoder"]
    args += [f"{encoder}.init_args.path", str(tmp_path / "nowhere")]
    assert run_cli(args) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [
        f"lit-genai: error: HFTextEncoder: path {tmp_path / 'nowhere'} is not a folder; give a local Hugging "
        "Face CLIP or T5 text encoder folder (config.json, weights, tokenizer files), e.g. one saved by "
        "save_pretrained"
    ]


@pytest.mark.slow  # about 20 s: a fit and a predict through the command line
def test_text_to_image_fit_and_predict_with_a_clip_encoder(folders, tmp_path):
    """The text-to-image recipe with the CLIP folder as its text encoder: it trains, its checkpoint
    holds the encoder's weights, and ``predict --model.sampling.prompt`` draws from the checkpoint."""
    import yaml

    encoder = {
        "class_path": "lit_genai.nn.hf_text_encoder.HFTextEncoder",
        "init_args": {"path": str(folders["clip"])},
    }
    net = {"base_channels": 8, "channel_mult": [1, 2], "num_groups": 4, "attention_levels": []}
    net.update(cross_attention_levels=[1], text_encoder=encoder)
    sizes = {"train_size": 64, "val_size": 16, "test_size": 16, "held_out_size": 16}
    tiny = {
        "model": {"init_args": {"net": {"init_args": net}, "num_timesteps": 50, "sampling": {"steps": 3}}},
        "data": {"init_args": {"batch_size": 8, "predict_samples": 2, **sizes}},
        "trainer": {**TINY_CLI_TRAINER, "default_root_dir": str(tmp_path / "run")},
        "samples": {"num_samples": 2},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    recipe = str(Path(DEMO).parent / "text2image_shapes_unet.yaml")
    base = ["--config", recipe, "--config", str(tmp_path / "tiny.yaml")]
    assert run_cli(["fit", *base]) == 0
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
    encoder = HFTextEncoder(str(folders["clip"]))
    for name, value in encoder.state_dict().items():  # frozen: saved, and unchanged by training
        assert torch.equal(state[f"net.text_encoder.{name}"], value)
    prompt = "a large green star on a white background"
    assert run_cli(["predict", *base, "--ckpt_path", str(last), "--model.sampling.prompt", prompt]) == 0
    lines = (tmp_path / "run" / "predictions" / "prompts.txt").read_text().splitlines()
    assert len(lines) == 2 and all(line.endswith(f"\t{prompt}") for line in lines)
