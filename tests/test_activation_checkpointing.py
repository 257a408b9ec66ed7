"""``checkpoint_activations`` of the GPT and the DiT: same outputs and gradients as without, no new
state-dict keys, and no recomputation in evaluation or when sampling with the KV cache."""

import pytest
import torch
import torch.utils.checkpoint as torch_checkpoint

from lit_genai.nn.dit import DiT
from lit_genai.nn.transformer import GPT


def _gpt(checkpoint_activations: bool, **kwargs) -> GPT:
    torch.manual_seed(0)
    net = dict(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, num_classes=3, **kwargs)
    return GPT(**net, checkpoint_activations=checkpoint_activations).double()


def _dit(checkpoint_activations: bool) -> DiT:
    torch.manual_seed(0)
    net = DiT(
        1,
        8,
        patch_size=4,
        hidden_size=16,
        depth=2,
        num_heads=2,
        num_classes=3,
        checkpoint_activations=checkpoint_activations,
    )  # float32: its timestep embedding is float32
    with torch.no_grad():  # adaLN-Zero starts every block as the identity: make the blocks count
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def _count_checkpoints(monkeypatch) -> list:
    calls = []
    real = torch_checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real(*args, **kwargs)

    for module in ("lit_genai.nn.transformer", "lit_genai.nn.dit"):
        monkeypatch.setattr(f"{module}.checkpoint", counting)
    return calls


def _loss_and_grads(net, *inputs):
    net.zero_grad(set_to_none=True)
    out = net(*inputs)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_gpt_same_outputs_and_gradients(monkeypatch, dropout):
    idx, cond = torch.randint(0, 11, (3, 16)), torch.tensor([0, 2, 3])
    plain, ckpt = _gpt(False, dropout=dropout).train(), _gpt(True, dropout=dropout).train()
    assert list(plain.state_dict()) == list(ckpt.state_dict())  # no new keys
    torch.manual_seed(1)
    out_a, grads_a = _loss_and_grads(plain, idx, cond)
    calls = _count_checkpoints(monkeypatch)
    torch.manual_seed(1)  # dropout: the recomputation replays the saved RNG state
    out_b, grads_b = _loss_and_grads(ckpt, idx, cond)
    assert calls == [False, False]  # one non-reentrant checkpoint per block
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=1e-12)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=0, atol=1e-10, msg=name)


def test_dit_same_outputs_and_gradients(monkeypatch):
    x, t, y = (
        torch.randn(3, 1, 8, 8),
        torch.tensor([1, 500, 999]),
        torch.tensor([0, 1, 3]),
    )
    plain, ckpt = _dit(False).train(), _dit(True).train()
    assert list(plain.state_dict()) == list(ckpt.state_dict())
    out_a, grads_a = _loss_and_grads(plain, x, t, y)
    calls = _count_checkpoints(monkeypatch)
    out_b, grads_b = _loss_and_grads(ckpt, x, t, y)
    assert calls == [False, False]
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=0, atol=1e-5, msg=name)


def test_no_recomputation_in_eval_no_grad_or_with_a_cache(monkeypatch):
    calls = _count_checkpoints(monkeypatch)
    gpt, dit = _gpt(True), _dit(True)
    idx = torch.randint(0, 11, (2, 5))
    gpt.eval()(idx, torch.tensor([0, 1]))
    dit.eval()(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]))
    with torch.no_grad():
        gpt.train()(idx, torch.tensor([0, 1]))
    assert calls == []
    # The KV cache path, even in training mode with gradients on: same logits as full recomputation.
    gpt.train()
    cache = gpt.init_cache(2)
    stepped = torch.cat([gpt(idx[:, i : i + 1], torch.tensor([0, 1]), cache=cache) for i in range(5)], dim=1)
    assert calls == []
    torch.testing.assert_close(stepped, _gpt(False).train()(idx, torch.tensor([0, 1])), rtol=0, atol=1e-10)


def test_checkpoint_loads_across_the_option():
    # A checkpoint saved without the option loads into a net with it, and the reverse: keys unchanged.
    _gpt(True).load_state_dict(_gpt(False).state_dict(), strict=True)
    _dit(False).load_state_dict(_dit(True).state_dict(), strict=True)
