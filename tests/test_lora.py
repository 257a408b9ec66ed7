"""LoRA (lit_genai.nn.lora): the adapted net starts as the base exactly, merging keeps the logits,
only the adapters get gradients and optimiser slots, adapter files round-trip, and the command line
fine-tunes a base checkpoint with ``model.init_args.lora``."""

import functools
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from helpers import TINY_CLI_TRAINER, quiet_trainer

from lit_genai.ar.module import NextToken, NextTokenSampling
from lit_genai.cli import main
from lit_genai.errors import ConfigError
from lit_genai.nn.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    load_adapters,
    lora_layers,
    merged,
    merged_copy,
    save_adapters,
    trainable_parameters,
)
from lit_genai.nn.transformer import GPT

ROOT = Path(__file__).resolve().parents[1]
TEXT_DEMO = str(ROOT / "experiments" / "ar" / "text_demo.yaml")
V, BLOCK = 11, 16


def tiny_gpt(**kwargs) -> GPT:
    torch.manual_seed(0)
    return GPT(**{"vocab_size": V, "block_size": BLOCK, "n_layer": 2, "n_head": 2, "n_embd": 32, **kwargs})


def ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (3, BLOCK), generator=torch.Generator().manual_seed(seed))  # (B, T)


def train_adapters(net: torch.nn.Module) -> None:
    """Stand-in for training: non-zero B everywhere (B starts at zero)."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for layer in lora_layers(net).values():
            layer.lora_B.copy_(0.05 * torch.randn(layer.lora_B.shape, generator=generator))


def lora_model(**kwargs) -> NextToken:
    return NextToken(
        tiny_gpt(),
        vocab_size=V,
        block_size=BLOCK,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
        lora=LoRAConfig(rank=4, alpha=8.0),
        **kwargs,
    )


def test_the_adapted_net_starts_as_the_base_exactly_and_keeps_its_state_dict_names():
    base, net = tiny_gpt().eval(), apply_lora(tiny_gpt(), LoRAConfig(rank=4, alpha=8.0)).eval()
    assert torch.equal(net(ids()), base(ids()))  # B = 0: bit for bit (Hu et al. 2022, sec. 4.1)
    names = set(net.state_dict())
    assert set(base.state_dict()) <= names  # the base names are unchanged (init_from, GPT-2 loading)
    assert {n for n in names - set(base.state_dict())} == {
        f"transformer.h.{i}.{layer}.lora_{ab}"
        for i in range(2)
        for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
        for ab in "AB"
    }  # every attention and MLP projection, not the (tied) output layer
    assert net.lm_head.weight is net.transformer.wte.weight and type(net.lm_head) is torch.nn.Linear
    c_attn = net.transformer.h[0].attn.c_attn
    assert (
        isinstance(c_attn, LoRALinear) and c_attn.lora_A.shape == (4, 32) and c_attn.lora_B.shape == (96, 4)
    )
    # trainable = 2 layers x (c_attn 4*(32+96) + c_proj 4*(32+32) + c_fc 4*(32+128) + c_proj 4*(128+32))
    assert trainable_parameters(net) == (
        2 * 4 * (128 + 64 + 160 + 160),
        sum(p.numel() for p in net.parameters()),
    )


def test_targets_choose_layers_by_name_and_an_unknown_name_is_one_line():
    net = apply_lora(tiny_gpt(), LoRAConfig(rank=2, targets=["c_attn"]))
    assert set(lora_layers(net)) == {"transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"}
    one = apply_lora(tiny_gpt(), LoRAConfig(rank=2, targets=("transformer.h.1.mlp.c_fc",)))
    assert set(lora_layers(one)) == {"transformer.h.1.mlp.c_fc"}
    with pytest.raises(
        ConfigError, match=r"matches no nn.Linear layer.*\['c_attn', 'c_fc', 'c_proj', 'lm_head'\]"
    ):
        apply_lora(tiny_gpt(), LoRAConfig(targets=("q_proj",)))
    with pytest.raises(ConfigError, match="rank=0"):
        LoRAConfig(rank=0)


def test_merged_logits_equal_the_unmerged_and_the_base_weights_come_back_bit_for_bit():
    net = apply_lora(tiny_gpt(), LoRAConfig(rank=4, alpha=8.0)).eval()
    train_adapters(net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    unmerged = net(ids())
    assert not torch.allclose(unmerged, tiny_gpt().eval()(ids()), atol=1e-3)  # the adapters act
    with merged(net):
        layer = net.transformer.h[0].attn.c_attn
        assert layer.merged and not torch.equal(layer.weight, before["transformer.h.0.attn.c_attn.weight"])
        torch.testing.assert_close(net(ids()), unmerged, atol=1e-5, rtol=0)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert not any(m.merged for m in lora_layers(net).values())
    # merge() / unmerge() in place: the same logits, and the weights back up to rounding
    for m in lora_layers(net).values():
        m.merge()
    torch.testing.assert_close(net(ids()), unmerged, atol=1e-5, rtol=0)
    for m in lora_layers(net).values():
        m.unmerge()
    torch.testing.assert_close(net.state_dict(), before, atol=1e-6, rtol=0)
    # The export copy: plain nn.Linear layers with W + (alpha / r) B A, the base names only.
    plain = merged_copy(net)
    assert not lora_layers(plain) and set(plain.state_dict()) == set(tiny_gpt().state_dict())
    torch.testing.assert_close(plain(ids()), unmerged, atol=1e-5, rtol=0)
    assert plain.lm_head.weight is plain.transformer.wte.weight  # the copy keeps the weight tying


def test_the_merged_copy_exports_with_torch_export():
    net = apply_lora(tiny_gpt(n_layer=1), LoRAConfig(rank=2)).eval()
    train_adapters(net)
    program = torch.export.export(merged_copy(net), (ids(),))
    torch.testing.assert_close(program.module()(ids()), net(ids()), atol=1e-5, rtol=0)


def test_only_the_adapters_get_gradients_and_optimiser_slots():
    model = lora_model()
    train_adapters(model.net)  # with B = 0, A's gradient would be zero too
    model(ids()).logsumexp(-1).mean().backward()
    for name, p in model.net.named_parameters():
        adapter = name.endswith(("lora_A", "lora_B"))
        assert p.requires_grad == adapter, name
        assert (p.grad is not None and p.grad.abs().sum() > 0) if adapter else p.grad is None, name
    optimizer = model.configure_optimizers()
    in_optimizer = [p for group in optimizer.param_groups for p in group["params"]]
    adapters = [p for n, p in model.net.named_parameters() if n.endswith(("lora_A", "lora_B"))]
    assert len(in_optimizer) == len(adapters) and {id(p) for p in in_optimizer} == {id(p) for p in adapters}
    # no nn.Linear `weight` among them: the adapters get no weight decay
    assert all(group["weight_decay"] == 0.0 for group in optimizer.param_groups)


def test_sampling_merges_the_adapters_and_leaves_the_weights_as_they_were():
    model = lora_model(sampling=NextTokenSampling(max_new_tokens=5, temperature=0.0))
    train_adapters(model.net)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    hook = model.net.transformer.h[0].attn.c_attn.register_forward_hook(lambda m, i, o: seen.append(m.merged))
    out = model.sample(2, prompt=[1, 2, 3])
    hook.remove()
    assert out.shape == (2, 8) and seen and all(seen)  # every step ran on the merged weights
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    unmerged = model.net(out[:1, :-1])[0].argmax(-1)  # greedy: each new token is the unmerged argmax too
    assert torch.equal(unmerged[2:], out[0, 3:])


def test_adapter_files_hold_the_adapters_alone_and_round_trip(tmp_path):
    model = lora_model(init_from="base.ckpt")
    train_adapters(model.net)
    path = save_adapters(model, tmp_path / "adapters.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["base"] == "base.ckpt" and payload["lora"] == {
        "rank": 4,
        "alpha": 8.0,
        "dropout": 0.0,
        "targets": ["c_attn", "c_proj", "c_fc"],
    }
    assert set(payload["adapters"]) == {n for n in model.net.state_dict() if "lora_" in n}
    fresh = lora_model(init_from="base.ckpt")  # the same base weights (seed 0), fresh adapters
    assert not torch.equal(fresh.net(ids()), model.net(ids()))
    info = load_adapters(fresh, path)
    assert info["base"] == "base.ckpt"
    assert torch.equal(fresh.net(ids()), model.net(ids()))
    other_rank = NextToken(tiny_gpt(), vocab_size=V, block_size=BLOCK, lora=LoRAConfig(rank=2, alpha=8.0))
    with pytest.raises(
        ConfigError, match=r"shape \[4, 32\] there but \[2, 32\] here: use the same lora.rank"
    ):
        load_adapters(other_rank, path)
    with pytest.raises(ConfigError, match="has no LoRA adapters"):
        save_adapters(NextToken(tiny_gpt(), vocab_size=V, block_size=BLOCK), tmp_path / "none.pt")


def test_a_lora_checkpoint_keeps_plain_hyperparameters_and_reloads(tmp_path):
    model = lora_model()
    assert model.hparams["lora"] == LoRAConfig(rank=4, alpha=8.0).plain()  # plain: weights_only-readable
    train_adapters(model.net)
    data = [(ids(s)[:, :-1], ids(s)[:, 1:]) for s in range(4)]
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    base_before = model.net.transformer.h[0].attn.c_attn.weight.clone()
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=None))
    assert torch.equal(model.net.transformer.h[0].attn.c_attn.weight, base_before)  # frozen
    trainer.save_checkpoint(tmp_path / "lora.ckpt")
    assert torch.load(tmp_path / "lora.ckpt", weights_only=True)["hyper_parameters"]["lora"]["rank"] == 4
    net = tiny_gpt()
    reloaded = NextToken.load_from_checkpoint(tmp_path / "lora.ckpt", net=net)
    assert lora_layers(reloaded.net) and torch.equal(reloaded.net(ids()), model.net.eval()(ids()))


def _run(args):
    try:
        with mock.patch.object(sys, "argv", ["lit-genai"]):
            main(args)
    except SystemExit as exit:
        return exit.code
    return 0


def test_the_command_line_fine_tunes_a_base_checkpoint_with_adapters(tmp_path):
    def config(root, extra):
        tiny = {
            "model": {
                "init_args": {
                    "net": {"init_args": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}},
                    "sampling": {"max_new_tokens": 6},
                    **extra,
                }
            },
            "data": {"init_args": {"block_size": 16, "batch_size": 4, "predict_samples": 2}},
            "trainer": {**TINY_CLI_TRAINER, "default_root_dir": str(root)},
            "samples": {"num_samples": 2},
        }
        path = root.with_suffix(".yaml")
        path.write_text(yaml.safe_dump(tiny))
        return ["--config", TEXT_DEMO, "--config", str(path)]

    base = config(tmp_path / "base", {})
    assert _run(["fit", *base]) == 0
    (base_ckpt,) = (tmp_path / "base").rglob("last.ckpt")
    lora = {"lora": {"rank": 2, "alpha": 4.0, "targets": ["c_attn", "c_fc"]}, "init_from": str(base_ckpt)}
    tune = config(tmp_path / "tune", lora)
    assert _run(["fit", *tune]) == 0
    (tune_ckpt,) = (tmp_path / "tune").rglob("last.ckpt")
    base_state = torch.load(base_ckpt, weights_only=True)["state_dict"]
    tuned = torch.load(tune_ckpt, weights_only=True)["state_dict"]
    assert all(torch.equal(tuned[k], v) for k, v in base_state.items() if k.startswith("net."))  # frozen base
    assert any(k.endswith("lora_B") and v.abs().sum() > 0 for k, v in tuned.items())  # the adapters trained
    assert _run(["predict", *tune, "--ckpt_path", "last", "--model.sampling.prompt", "The "]) == 0
    texts = [p.read_text() for p in (tmp_path / "tune" / "predictions").glob("sample_*.txt")]
    assert len(texts) == 2 and all(t.startswith("The ") and len(t) == 4 + 6 for t in texts)


def test_the_transformers_export_gets_the_merged_weights_under_gpt2_names():
    from lit_genai.export.huggingface import check_exportable, gpt2_state_dict

    model = NextToken(tiny_gpt(bias=True), vocab_size=V, block_size=BLOCK, lora=LoRAConfig(rank=2))
    train_adapters(model.net)
    net = check_exportable(model)
    assert not lora_layers(net) and lora_layers(model.net)  # a merged copy; the module keeps its adapters
    state = gpt2_state_dict(net)
    assert set(state) == set(gpt2_state_dict(tiny_gpt(bias=True)))
    layer = model.net.transformer.h[0].attn.c_attn
    expected = (layer.weight + layer.delta()).t()  # Conv1D stores (in, out)
    torch.testing.assert_close(state["transformer.h.0.attn.c_attn.weight"], expected, atol=1e-6, rtol=0)
