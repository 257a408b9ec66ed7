"""Rotary position embeddings in nn.transformer: relative offsets, exact cached decoding."""

import pytest
import torch

from lit_genai.errors import ConfigError
from lit_genai.nn.transformer import GPT, rotary


def test_rotary_dot_products_depend_on_the_position_offset_only():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(i, j):
        return (rotary(q, torch.tensor([i])) * rotary(k, torch.tensor([j]))).sum().item()

    assert score(3, 7) == pytest.approx(score(10, 14), abs=1e-5)
    assert score(3, 7) != pytest.approx(score(3, 8), abs=1e-3)
    assert rotary(q, torch.tensor([5])).norm().item() == pytest.approx(q.norm().item(), rel=1e-6)
    assert torch.equal(rotary(q, torch.tensor([0])), q)  # angle 0 at position 0


def test_cached_decoding_with_rope_equals_full_recomputation():
    torch.manual_seed(0)
    net = GPT(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, rope=True).eval()
    idx = torch.randint(0, 11, (2, 9))
    with torch.no_grad():
        full = net(idx)  # (2, 9, 11)
        cache = net.init_cache(2)
        first = net(idx[:, :5], cache=cache)
        rest = [net(idx[:, t : t + 1], cache=cache) for t in range(5, 9)]
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), full, atol=1e-5, rtol=1e-5)


def test_rope_changes_a_bidirectional_net_and_needs_an_even_head_size():
    torch.manual_seed(0)
    plain = GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, causal=False)
    torch.manual_seed(0)
    rope = GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, causal=False, rope=True)
    idx = torch.randint(0, 11, (1, 8))
    assert not torch.allclose(plain(idx), rope(idx))  # same weights, rotated attention
    with pytest.raises(ConfigError, match="even head size"):
        GPT(vocab_size=11, block_size=8, n_head=2, n_embd=6, rope=True)
