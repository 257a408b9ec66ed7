"""GPT (lit_genai.nn.transformer): causality, initial loss, init statistics, weight tying,
conditioning, the key/value cache (at Python and at tensor positions) and one-line errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from lit_genai.errors import ConfigError
from lit_genai.nn.transformer import GPT, KVCache


def tiny(**kwargs) -> GPT:
    torch.manual_seed(0)
    return GPT(**{"vocab_size": 17, "block_size": 12, "n_layer": 2, "n_head": 2, "n_embd": 16, **kwargs})


def test_shapes_and_attributes():
    net = tiny(num_classes=3)
    logits = net(torch.randint(0, 17, (5, 9)), torch.tensor([0, 1, 2, 3, 0]))
    assert logits.shape == (5, 9, 17) and logits.dtype == torch.float32
    assert (net.vocab_size, net.block_size, net.num_classes, net.n_layer) == (17, 12, 3, 2)


@pytest.mark.parametrize("t", [0, 4, 11])
def test_causal_logits_ignore_later_tokens(t):
    net = tiny().eval()
    x = torch.randint(0, 17, (3, 12))
    x2 = x.clone()
    x2[:, t] = (x[:, t] + 1) % 17
    a, b = net(x), net(x2)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert (a[:, t:] - b[:, t:]).abs().amax(dim=-1).min() > 1e-4  # every later position sees it


def test_bidirectional_logits_see_later_tokens():
    net = tiny(causal=False).eval()
    x = torch.randint(0, 17, (3, 12))
    x2 = x.clone()
    x2[:, 8] = (x[:, 8] + 1) % 17
    assert (net(x)[:, :8] - net(x2)[:, :8]).abs().amax(dim=-1).min() > 1e-4


def test_fresh_model_loss_is_log_vocab():
    torch.manual_seed(0)
    net = GPT(vocab_size=65, block_size=64)  # the shakespeare_char CPU size: 4 layers, 4 heads, 128 wide
    x, y = torch.randint(0, 65, (2, 8, 64))
    with torch.no_grad():
        loss = F.cross_entropy(net(x).reshape(-1, 65), y.reshape(-1))
    assert abs(loss.item() - math.log(65)) < 0.1


def test_init_statistics():
    torch.manual_seed(0)
    net = GPT(vocab_size=65, block_size=64, n_layer=4, n_embd=128, bias=True)
    c_proj = torch.cat([p.flatten() for n, p in net.named_parameters() if n.endswith("c_proj.weight")])
    assert c_proj.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.03)
    c_fc = torch.cat([b.mlp.c_fc.weight.flatten() for b in net.transformer.h])
    assert c_fc.std().item() == pytest.approx(0.02, rel=0.03)
    assert net.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert net.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.03)
    biases = [p for n, p in net.named_parameters() if n.endswith(".bias")]
    assert biases and all((b == 0).all() for b in biases)  # linear and LayerNorm biases start at 0
    assert all((b.ln_1.weight == 1).all() for b in net.transformer.h)


def test_weight_tying_and_parameter_count():
    V, T, D, L = 65, 64, 128, 4
    net = GPT(vocab_size=V, block_size=T, n_layer=L, n_embd=D)
    assert net.lm_head.weight is net.transformer.wte.weight
    assert net.lm_head.weight.data_ptr() == net.transformer.wte.weight.data_ptr()
    per_block = 12 * D * D + 2 * D  # attention 4D^2, MLP 8D^2, two LayerNorm gains (bias=False)
    total = V * D + T * D + L * per_block + D  # + final LayerNorm; the output layer is the embedding
    assert net.num_params(non_embedding=False) == total
    assert net.num_params() == total - T * D
    # a gradient through the output layer reaches the embedding tensor
    net(torch.randint(0, V, (1, 4))).sum().backward()
    assert net.transformer.wte.weight.grad is not None


def test_conditioning_and_null_label():
    net = tiny(num_classes=3).eval()
    x = torch.randint(0, 17, (1, 6)).repeat(4, 1)
    logits = net(x, torch.tensor([0, 1, 2, 3]))  # 3 = the null label
    assert torch.isfinite(logits).all()
    for i in range(4):
        for j in range(i + 1, 4):  # every label, the null one too, changes the logits at every position
            assert (logits[i] - logits[j]).abs().amax(dim=-1).min() > 1e-4
    with pytest.raises(IndexError):
        net(x[:1], torch.tensor([4]))  # beyond the null label
    with pytest.raises(ValueError, match="cond must be"):
        net(x)
    with pytest.raises(ValueError, match="num_classes=0"):
        tiny()(x, torch.zeros(4, dtype=torch.long))


def test_cache_matches_full_forward():
    net = tiny(num_classes=2).eval()
    x = torch.randint(0, 17, (3, 12))
    cond = torch.tensor([0, 1, 2])
    full = net(x, cond)
    cache = net.init_cache(3)
    assert isinstance(cache, KVCache) and cache.length == 0 and cache.capacity == 12
    parts = [net(x[:, a:b], cond, cache=cache) for a, b in ((0, 5), (5, 6), (6, 10), (10, 11), (11, 12))]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(), dict(num_classes=2, rope=True)])
@pytest.mark.parametrize("per_row", [False, True])
def test_cache_at_position_tensors_equals_full_forward(kwargs, per_row):
    """The static cache read whole and masked (input_pos): the exportable decode step's path."""
    net = tiny(**kwargs).eval()
    x = torch.randint(0, 17, (3, 12))
    cond = torch.tensor([0, 1, 2]) if kwargs else None
    full = net(x, cond)
    cache = net.init_cache(3)
    for _ in range(2):  # a second sequence restarts at position 0 with no reset of the cache
        steps = []
        for t in range(12):
            pos = torch.full((3, 1), t) if per_row else torch.tensor([t])
            steps.append(net(x[:, t : t + 1], cond, cache=cache, input_pos=pos))
        torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 0  # positions given by the caller: the cache does not count them
    chunks = net.init_cache(3)  # chunks at position tensors too (a prompt in one call)
    first = net(x[:, :5], cond, cache=chunks, input_pos=torch.arange(5))
    rest = net(x[:, 5:], cond, cache=chunks, input_pos=torch.arange(5, 12))
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, rtol=1e-5, atol=1e-5)


def test_rows_at_different_positions_decode_their_own_sequences():
    net = tiny(rope=True).eval()
    x = torch.randint(0, 17, (2, 12))
    full = net(x)
    cache = net.init_cache(2)
    for s in range(12):  # row 1 lags 4 positions behind row 0 (it rewrites position 0 until then)
        pos = torch.tensor([[s], [max(s - 4, 0)]])
        logits = net(x.gather(1, pos), cache=cache, input_pos=pos)[:, 0]  # (2, V)
        torch.testing.assert_close(logits[0], full[0, s], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits[1], full[1, pos[1, 0]], rtol=1e-5, atol=1e-5)


def test_position_tensors_need_a_cache_a_causal_net_and_fitting_shapes():
    x = torch.zeros(2, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="input_pos needs a cache"):
        tiny()(x, input_pos=torch.tensor([0]))
    bidirectional = tiny(causal=False)
    with pytest.raises(ValueError, match="causal net"):
        bidirectional(x, cache=bidirectional.init_cache(2), input_pos=torch.tensor([0]))
    net = tiny()
    with pytest.raises(ValueError, match=r"input_pos must be \(1,\) or \(2, 1\)"):
        net(x, cache=net.init_cache(2), input_pos=torch.tensor([0, 1]))


def test_dropout_only_in_training():
    net = tiny(dropout=0.5)
    x = torch.randint(0, 17, (2, 8))
    net.train()
    assert (net(x) - net(x)).abs().max() > 1e-3
    net.eval()
    torch.testing.assert_close(net(x), net(x))


def test_bad_lengths_are_one_line():
    net = tiny()
    with pytest.raises(ConfigError, match="block_size=12") as err:
        net(torch.zeros(1, 13, dtype=torch.long))
    assert "\n" not in str(err.value)
    cache = net.init_cache(1)
    net(torch.zeros(1, 10, dtype=torch.long), cache=cache)
    with pytest.raises(ConfigError, match="3 new tokens after 10 cached") as err:
        net(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="must divide n_embd"):
        GPT(vocab_size=5, block_size=4, n_head=3, n_embd=16)


@pytest.mark.parametrize("safe", [True, False])
def test_gpt2_weights_from_a_hugging_face_folder(tmp_path, safe):
    transformers = pytest.importorskip("transformers")
    from lit_genai.ar.pretrained import load_gpt2

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # non-zero biases and LayerNorm parameters, so every copy is checked
        for name, p in hf.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path, safe_serialization=safe)
    net = load_gpt2(tmp_path)
    assert (net.vocab_size, net.block_size, net.n_layer, net.n_head, net.n_embd) == (50, 16, 2, 4, 32)
    assert net.lm_head.weight is net.transformer.wte.weight
    idx = torch.randint(0, 50, (3, 16))
    with torch.no_grad():
        expected = hf(idx).logits
        torch.testing.assert_close(net(idx), expected, rtol=0, atol=1e-5)
        short = load_gpt2(tmp_path, block_size=8)  # cropped context: the same logits on 8 tokens
        torch.testing.assert_close(short(idx[:, :8]), expected[:, :8], rtol=0, atol=1e-5)
    if safe:  # the same weights as a network class for YAML (class_path + init_args: folder)
        from lit_genai.ar.pretrained import PretrainedGPT2

        yaml_net = PretrainedGPT2(str(tmp_path)).eval()
        assert isinstance(yaml_net, GPT) and yaml_net.folder == str(tmp_path)
        with torch.no_grad():
            torch.testing.assert_close(yaml_net(idx), expected, rtol=0, atol=1e-5)


def test_gpt2_folder_errors_are_one_line(tmp_path):
    from lit_genai.ar.pretrained import load_gpt2

    with pytest.raises(ConfigError, match="no config.json") as err:
        load_gpt2(tmp_path)
    assert "\n" not in str(err.value)
    (tmp_path / "config.json").write_text(
        '{"model_type": "gpt2", "n_embd": 32, "activation_function": "relu"}'
    )
    with pytest.raises(ConfigError, match="activation_function='relu'"):
        load_gpt2(tmp_path)
    (tmp_path / "config.json").write_text(
        '{"model_type": "gpt2", "vocab_size": 5, "n_positions": 4, "n_embd": 8, "n_layer": 1, "n_head": 2}'
    )
    with pytest.raises(ConfigError, match="neither model.safetensors nor pytorch_model.bin"):
        load_gpt2(tmp_path)
