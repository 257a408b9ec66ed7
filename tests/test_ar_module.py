"""NextToken: next-token loss and likelihood metrics, AdamW groups, the nanoGPT schedule, sampling,
checkpoints (vocabulary, compile, init_from), bf16, and the command line's predict and W&B route."""

import functools
import json
import math
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import TINY_CLI_TRAINER, quiet_trainer
from lightning.pytorch.callbacks import Callback

from lit_genai.ar.module import (
    NextToken,
    NextTokenSampling,
    decay_parameter_names,
    load_net_weights,
    nanogpt_lr,
)
from lit_genai.cli import main
from lit_genai.data.text import CharText
from lit_genai.errors import ConfigError
from lit_genai.nn.transformer import GPT

ROOT = Path(__file__).resolve().parents[1]
TEXT_DEMO = str(ROOT / "experiments" / "ar" / "text_demo.yaml")
BLOCK = 16


@pytest.fixture(scope="module")
def text():
    """The standard library's help topics as 16-character windows (offline, ~0.2 s)."""
    return CharText(name="pydoc_topics", block_size=BLOCK, batch_size=8, steps_per_epoch=20)


def tiny_gpt(vocab_size: int, **kwargs) -> GPT:
    torch.manual_seed(0)
    return GPT(
        **{"vocab_size": vocab_size, "block_size": BLOCK, "n_layer": 2, "n_head": 2, "n_embd": 32, **kwargs}
    )


def tiny_model(data: CharText, **kwargs) -> NextToken:
    net = kwargs.pop("net", None) or tiny_gpt(data.vocab_size)
    return NextToken(
        net,
        vocab_size=data.vocab_size,
        block_size=data.block_size,
        vocabulary=data.vocabulary,
        **{
            "optimizer": functools.partial(torch.optim.AdamW, lr=3e-3),
            "sampling": NextTokenSampling(max_new_tokens=12),
            **kwargs,
        },
    )


def fit(model, data, root, steps=2, **kwargs):
    trainer = quiet_trainer(root, max_steps=steps, **{"limit_val_batches": 2, **kwargs})
    trainer.fit(model, data)
    return trainer


# ---------------------------------------------------------------------- loss and metrics


def test_a_fresh_model_scores_about_ln_v():
    V = 50
    model = NextToken(tiny_gpt(V), vocab_size=V, block_size=BLOCK)
    x = torch.randint(0, V, (64, BLOCK), generator=torch.Generator().manual_seed(0))
    loss = model.training_step((x, torch.roll(x, -1, 1)), 0)  # uniform random tokens
    assert abs(loss.item() - math.log(V)) < 0.02  # N(0, 0.02) weights: near-uniform logits


def test_the_metrics_are_the_means_over_every_token_of_the_split(text, tmp_path):
    model = tiny_model(text)
    (metrics,) = quiet_trainer(tmp_path, limit_val_batches=3).validate(model, text, verbose=False)
    # The mean NLL per token over every token of the three batches, against F.cross_entropy.
    loader = text.val_dataloader()
    batches = [b for _, b in zip(range(3), loader, strict=False)]
    with torch.no_grad():
        nll = [F.cross_entropy(model.net(x).flatten(0, 1), y.flatten(), reduction="sum") for x, y in batches]
    expected = sum(nll) / sum(y.numel() for _, y in batches)
    assert metrics["val/loss"] == pytest.approx(float(expected), rel=1e-5)
    assert metrics["val/nll_nats"] == metrics["val/loss"]
    assert metrics["val/ppl"] == pytest.approx(math.exp(metrics["val/loss"]), rel=1e-5)
    assert metrics["val/bpd"] == pytest.approx(metrics["val/loss"] / math.log(2), rel=1e-5)
    (test,) = quiet_trainer(tmp_path, limit_test_batches=3).test(model, text, verbose=False)
    assert test["test/loss"] == pytest.approx(metrics["val/loss"], rel=1e-6)  # test = the validation windows
    assert set(test) == {"test/loss", "test/nll_nats", "test/ppl", "test/bpd"}


def test_training_on_the_cpu_lowers_the_validation_loss_and_ends_at_min_lr(text, tmp_path):
    model = tiny_model(text, warmup_steps=5, weight_decay=0.1)
    (before,) = quiet_trainer(tmp_path, limit_val_batches=4).validate(model, text, verbose=False)
    trainer = fit(model, text, tmp_path, steps=40, limit_val_batches=4)
    (after,) = trainer.validate(model, text, verbose=False)
    assert after["val/loss"] < before["val/loss"] - 0.8, (before, after)
    # lr_decay_steps None: the cosine ends at the trainer's max_steps, at min_lr = lr / 10.
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(3e-4)


# ---------------------------------------------------------------------- optimiser and schedule


def test_weight_decay_groups_leave_out_norms_biases_and_embeddings():
    net = tiny_gpt(11, bias=True, num_classes=3)
    decay, no_decay = decay_parameter_names(net)
    assert set(decay) == {
        f"transformer.h.{i}.{name}.weight"
        for i in range(2)
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    embeddings = {"transformer.wte.weight", "transformer.wpe.weight", "class_emb.weight"}
    assert embeddings <= set(no_decay)  # the token embedding is also the (tied) output layer
    assert all(n.endswith(".bias") or ".ln_" in n or n in embeddings for n in no_decay)
    assert any(n.endswith(".bias") for n in no_decay) and "transformer.ln_f.weight" in no_decay
    assert sorted(decay + no_decay) == sorted(n for n, _ in net.named_parameters())  # each once

    model = NextToken(net, vocab_size=11, block_size=BLOCK, num_classes=3, weight_decay=0.25)
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)  # the default; no schedule asked for
    assert [(g["weight_decay"], g["names"]) for g in optimizer.param_groups] == [
        (0.25, decay),
        (0.0, no_decay),
    ]


def test_the_schedule_is_nanogpts_get_lr():
    lr, min_lr, warmup, decay = 1e-3, 1e-4, 10, 50
    assert nanogpt_lr(0, lr, warmup, decay, min_lr) == pytest.approx(lr / (warmup + 1))  # first step
    assert nanogpt_lr(9, lr, warmup, decay, min_lr) == pytest.approx(lr * 10 / 11)
    assert nanogpt_lr(10, lr, warmup, decay, min_lr) == pytest.approx(lr)  # peak after the warm-up
    assert nanogpt_lr(30, lr, warmup, decay, min_lr) == pytest.approx((lr + min_lr) / 2)  # mid-cosine
    assert nanogpt_lr(50, lr, warmup, decay, min_lr) == pytest.approx(min_lr)
    assert nanogpt_lr(80, lr, warmup, decay, min_lr) == min_lr
    assert nanogpt_lr(80, lr, warmup, None, min_lr) == lr  # no decay

    model = NextToken(
        tiny_gpt(7),
        vocab_size=7,
        block_size=BLOCK,
        optimizer=functools.partial(torch.optim.AdamW, lr=lr),
        warmup_steps=warmup,
        lr_decay_steps=decay,
        min_lr=min_lr,
    )
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    seen = []
    for _ in range(60):  # the LR each optimisation step runs with, in every group
        seen.append({g["lr"] for g in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    assert all(len(s) == 1 for s in seen)
    expected = [nanogpt_lr(i, lr, warmup, decay, min_lr) for i in range(60)]
    assert [s.pop() for s in seen] == pytest.approx(expected)


# ---------------------------------------------------------------------- sampling


def test_sample_shapes_seeds_prompts_and_per_sample_generators(text):
    model = tiny_model(text)
    g = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    ids = model.sample(3, generator=g(0), max_new_tokens=7)
    newline = text.vocabulary.index("\n")
    assert ids.shape == (3, 1 + 7) and ids.dtype == torch.long and (ids[:, 0] == newline).all()
    assert torch.equal(model.sample(3, generator=g(0), max_new_tokens=7), ids)  # same seed, same ids
    assert not torch.equal(model.sample(3, generator=g(1), max_new_tokens=7), ids)

    prompted = model.sample(2, generator=g(0), prompt="def f(x):")  # max_new_tokens: the module's 12
    assert prompted.shape == (2, 9 + 12)
    assert all(s.startswith("def f(x):") for s in model.decode(prompted))
    assert model.decode(prompted) == text.decode(prompted)
    assert torch.equal(prompted[:, :9], text.encode("def f(x):").expand(2, -1))

    # One generator per sample: row i is what generator seed i draws alone, whatever the batch.
    rows = model.sample(3, generator=[g(5), g(6), g(7)], max_new_tokens=5)
    assert torch.equal(rows[1:2], model.sample(1, generator=[g(6)], max_new_tokens=5))

    greedy = model.sample(2, generator=g(0), temperature=0.0, max_new_tokens=5)
    assert torch.equal(greedy[0], greedy[1])  # temperature 0: argmax decoding
    assert model.training  # sampled in eval mode, the mode restored


def test_prompts_outside_the_vocabulary_and_without_one_are_one_line(text):
    model = tiny_model(text)
    with pytest.raises(ConfigError, match="outside the vocabulary: '€'") as error:
        model.sample(1, prompt="price: 5€")
    assert "\n" not in str(error.value)
    bare = NextToken(
        tiny_gpt(7), vocab_size=7, block_size=BLOCK, sampling=NextTokenSampling(max_new_tokens=3)
    )
    assert bare.sample(2, prompt="1 2, 3")[:, :3].tolist() == [[1, 2, 3]] * 2  # ids as text
    assert bare.sample(2, prompt=[4, 5]).shape == (2, 5)
    assert bare.sample(2)[:, 0].tolist() == [0, 0]  # no vocabulary: start token 0
    with pytest.raises(ConfigError, match="needs the vocabulary"):
        bare.sample(1, prompt="hello")


def test_config_errors_are_one_line(text):
    with pytest.raises(ConfigError, match=r"model.net.block_size=16 but .* block_size=32: set model.net"):
        NextToken(tiny_gpt(7), vocab_size=7, block_size=32)
    with pytest.raises(ConfigError, match="model.net.vocab_size=7 but the data has vocab_size=9"):
        NextToken(tiny_gpt(7), vocab_size=9, block_size=BLOCK)
    with pytest.raises(ConfigError, match="model.vocabulary has 2 symbols but vocab_size=7"):
        NextToken(tiny_gpt(7), vocab_size=7, block_size=BLOCK, vocabulary=["a", "b"])


def test_a_conditional_net_gets_the_labels_and_p_uncond_drops_them():
    net = tiny_gpt(7, num_classes=3)
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    x = torch.randint(0, 7, (4, BLOCK))
    batch = (x, torch.roll(x, -1, 1), torch.tensor([0, 1, 2, 1]))
    model = NextToken(net, vocab_size=7, block_size=BLOCK, num_classes=3)
    assert torch.isfinite(model.training_step(batch, 0))
    assert seen[-1].tolist() == [0, 1, 2, 1]
    model = NextToken(net, vocab_size=7, block_size=BLOCK, num_classes=3, p_uncond=1.0)
    model.training_step(batch, 0)
    assert seen[-1].tolist() == [3, 3, 3, 3]  # all dropped to the null label
    ids = model.sample(2, cond=torch.tensor([0, 2]), max_new_tokens=3, generator=torch.Generator())
    assert ids.shape == (2, 4) and seen[-1].tolist() == [0, 2]
    model.sample(2, max_new_tokens=1)
    assert seen[-1].tolist() == [3, 3]  # no cond: the null label


def test_p_uncond_per_condition_name_drops_labels_and_an_unknown_name_is_one_line():
    net = tiny_gpt(7, num_classes=3)
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    x = torch.randint(0, 7, (64, BLOCK))
    labels = torch.arange(64) % 3
    model = NextToken(net, vocab_size=7, block_size=BLOCK, num_classes=3, p_uncond={"label": 0.5})
    torch.manual_seed(0)
    model.training_step((x, torch.roll(x, -1, 1), labels), 0)
    dropped = seen[-1] == 3  # the null label
    assert 10 < int(dropped.sum()) < 54  # about half of the 64 rows
    assert torch.equal(seen[-1][~dropped], labels[~dropped])
    model = NextToken(net, vocab_size=7, block_size=BLOCK, num_classes=3, p_uncond={"label": 1.0})
    model.training_step((x, torch.roll(x, -1, 1), labels), 0)
    assert (seen[-1] == 3).all()  # as p_uncond=1.0
    with pytest.raises(
        ConfigError, match=r"model.p_uncond names text, which the model does not use \(it uses: label\)"
    ) as error:
        NextToken(net, vocab_size=7, block_size=BLOCK, num_classes=3, p_uncond={"text": 0.5})
    assert "\n" not in str(error.value)


def test_sampling_settings_are_one_dataclass_and_an_unknown_option_is_one_line():
    model = NextToken(tiny_gpt(7), vocab_size=7, block_size=BLOCK, sampling=NextTokenSampling(top_k=3))
    assert model.sampling_settings() == {
        "max_new_tokens": 256,
        "temperature": 1.0,
        "top_k": 3,
        "top_p": None,
        "prompt": None,
        "class_label": None,
        "conversation": None,
    }
    assert (
        model.sampling_settings(temperature=0.5)["temperature"] == 0.5 and model.sampling.temperature == 1.0
    )
    with pytest.raises(
        ConfigError,
        match=r"option\(s\) max_tokens for NextTokenSampling; the options are: max_new_tokens, temperature",
    ) as error:
        model.sample(1, max_tokens=3)
    assert "\n" not in str(error.value)
    model.sampling = model.sampling.replace(max_new_tokens=4)
    assert model.sample(2).shape == (2, 1 + 4)


# ---------------------------------------------------------------------- checkpoints


def test_the_vocabulary_travels_with_the_checkpoint(text, tmp_path):
    model = tiny_model(text)
    trainer = fit(model, text, tmp_path)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)  # plain values only
    assert checkpoint["hyper_parameters"]["vocabulary"] == text.vocabulary
    assert "sampling" not in checkpoint["hyper_parameters"]  # sampling settings stay out
    loaded = NextToken.load_from_checkpoint(path, net=tiny_gpt(text.vocab_size))  # no data needed
    generator = torch.Generator().manual_seed(3)
    assert loaded.sampling == NextTokenSampling()  # not saved: the defaults
    ids = loaded.sample(2, prompt="The ", generator=generator, max_new_tokens=12)
    assert all(s.startswith("The ") and len(s) == 4 + 12 for s in loaded.decode(ids))
    same = model.sample(2, prompt="The ", generator=torch.Generator().manual_seed(3))
    assert torch.equal(ids, same)  # the same weights and vocabulary


class _CountCalls(Callback):
    def __init__(self) -> None:
        self.compiled = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.compiled.append(pl_module._compiled)


def test_compile_keeps_the_checkpoint_keys(text, tmp_path, monkeypatch):
    eager = functools.partial(torch.compile, backend="eager")  # dynamo without a C compiler
    monkeypatch.setattr(torch, "compile", eager)
    keys = {}
    for compile in (False, True):
        model = tiny_model(text, compile=compile)
        counter = _CountCalls()
        trainer = fit(model, text, tmp_path / str(compile), callbacks=[counter])
        trainer.save_checkpoint(tmp_path / f"{compile}.ckpt")
        keys[compile] = list(torch.load(tmp_path / f"{compile}.ckpt", weights_only=True)["state_dict"])
        used = counter.compiled[-1]
        assert (used is not None) == compile
        if compile:
            assert isinstance(used, torch._dynamo.eval_frame.OptimizedModule) and used._orig_mod is model.net
    assert keys[True] == keys[False] and all(k.startswith("net.") for k in keys[True])
    assert NextToken.load_from_checkpoint(
        tmp_path / "True.ckpt", net=tiny_gpt(text.vocab_size), compile=False
    )


@pytest.mark.slow
def test_compile_with_inductor_trains_like_eager(text, tmp_path):
    losses = {}
    for compile in (False, True):
        model = tiny_model(text, compile=compile)
        trainer = fit(model, text, tmp_path / str(compile), steps=3)
        losses[compile] = trainer.callback_metrics["train/loss"].item()
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)


def test_init_from_loads_the_net_weights_before_training(text, tmp_path):
    source = tiny_model(text)
    fit(source, text, tmp_path).save_checkpoint(tmp_path / "source.ckpt")
    model = tiny_model(text, init_from=str(tmp_path / "source.ckpt"))
    model.net.load_state_dict(tiny_gpt(text.vocab_size).state_dict())
    assert not torch.equal(model.net.transformer.wte.weight, source.net.transformer.wte.weight)
    seen = []

    class FirstWeights(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            seen.append({k: v.clone() for k, v in pl_module.net.state_dict().items()})

    tune = fit(model, text, tmp_path / "tune", steps=1, callbacks=[FirstWeights()])
    assert all(torch.equal(v, source.net.state_dict()[k]) for k, v in seen[0].items())
    # Resuming the fine-tuning run continues from its own checkpoint, not from init_from's weights.
    tune.save_checkpoint(tmp_path / "tune.ckpt")
    tuned = {k: v.clone() for k, v in model.net.state_dict().items()}
    resumed = tiny_model(text, init_from=str(tmp_path / "source.ckpt"))
    trainer = quiet_trainer(tmp_path / "resume", max_steps=2, callbacks=[FirstWeights()])
    trainer.fit(resumed, text, ckpt_path=tmp_path / "tune.ckpt")
    assert all(torch.equal(v, tuned[k]) for k, v in seen[1].items())

    wider = tiny_gpt(text.vocab_size, n_embd=16)
    with pytest.raises(ConfigError, match=r"net.transformer.wte.weight has shape \[103, 32\] there but"):
        load_net_weights(wider, str(tmp_path / "source.ckpt"))
    with pytest.raises(ConfigError, match="model.init_from=.*missing.ckpt: no such checkpoint file"):
        load_net_weights(wider, str(tmp_path / "missing.ckpt"))


def test_bf16_mixed_trains_on_the_cpu(text, tmp_path):
    model = tiny_model(text)
    before = model.net.transformer.h[0].attn.c_attn.weight.detach().clone()
    dtypes = []
    model.net.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    trainer = fit(model, text, tmp_path, steps=3, precision="bf16-mixed")
    assert dtypes[0] == torch.bfloat16  # autocast on the CPU
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    (metrics,) = trainer.validate(model, text, verbose=False)
    assert abs(metrics["val/loss"] - math.log(text.vocab_size)) < 0.5  # finite and sensible
    weight = model.net.transformer.h[0].attn.c_attn.weight
    assert weight.dtype == torch.float32 and not torch.equal(weight.detach(), before)  # fp32 master weights


# ---------------------------------------------------------------------- the command line


@pytest.fixture()
def tiny_demo(tmp_path):
    """experiments/ar/text_demo.yaml shrunk to seconds, in ``tmp_path / "run"``."""
    tiny = {
        "model": {
            "init_args": {
                "net": {"init_args": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}},
                "sampling": {"max_new_tokens": 10},
            }
        },
        "data": {"init_args": {"block_size": 16, "batch_size": 4, "predict_samples": 3}},
        "trainer": {**TINY_CLI_TRAINER, "default_root_dir": str(tmp_path / "run")},
        "samples": {"num_samples": 2},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny))
    return ["--config", TEXT_DEMO, "--config", str(path)]


def _run(args):
    try:
        with mock.patch.object(sys, "argv", ["lit-genai"]):
            main(args)
    except SystemExit as exit:
        return exit.code
    return 0


def test_predict_writes_text_files_starting_with_the_prompt(tiny_demo, tmp_path):
    assert _run(["fit", *tiny_demo]) == 0
    assert list((tmp_path / "run" / "samples").glob("*.txt"))  # the SampleLogger's listing
    assert _run(["predict", *tiny_demo, "--ckpt_path", "last", "--model.sampling.prompt", "The "]) == 0
    out = tmp_path / "run" / "predictions"
    assert sorted(p.name for p in out.glob("sample_*.txt")) == [f"sample_{i:05d}.txt" for i in range(3)]
    texts = [(out / f"sample_{i:05d}.txt").read_text() for i in range(3)]
    assert all(t.startswith("The ") and len(t) == 4 + 10 for t in texts)  # the CLI's prompt was used
    assert "==> sample_00002 <==" in (out / "samples.txt").read_text()


def test_wandb_offline_run_holds_the_text_samples(tiny_demo, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    import wandb

    wandb.finish()
    try:
        assert _run(["fit", *tiny_demo, "--trainer.logger", "lightning.pytorch.loggers.WandbLogger"]) == 0
    finally:
        wandb.finish()
    (run,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    tables = list((run / "files" / "media" / "table").rglob("samples_*.table.json"))
    assert tables, "no text table in the W&B run folder"
    rows = json.loads(tables[-1].read_text())["data"]
    assert [r[0] for r in rows] == [0, 1] and all(r[1].startswith("\n") and len(r[1]) == 11 for r in rows)


# ---------------------------------------------------------------------- labels chosen at sampling time


def test_class_label_picks_a_class_by_name_or_index_for_every_sample():
    net = tiny_gpt(7, num_classes=3)
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    model = NextToken(net, vocab_size=7, block_size=BLOCK, num_classes=3, class_names=["for", "if", "with"])
    model.sample(2, max_new_tokens=1, class_label="with")
    assert seen[-1].tolist() == [2, 2]
    model.sample(2, cond=torch.tensor([0, 1]), max_new_tokens=1, class_label="1")  # overrides cond
    assert seen[-1].tolist() == [1, 1]
    model.sampling = model.sampling.replace(class_label="if")  # --model.sampling.class_label if: predict's
    model.predict_step(torch.arange(3))
    assert seen[-1].tolist() == [1, 1, 1]
    with pytest.raises(ConfigError, match=r"class_label='while' is not one of the model's classes \(for, if"):
        model.sample(1, max_new_tokens=1, class_label="while")
    unconditional = NextToken(tiny_gpt(7), vocab_size=7, block_size=BLOCK)
    with pytest.raises(ConfigError, match="the model is unconditional"):
        unconditional.sample(1, max_new_tokens=1, class_label="0")


def test_help_topics_as_labels_link_through_the_command_line(tmp_path):
    """``labels: true`` on pydoc_topics gives one class per topic, linked with its name into the
    model, and ``predict --model.sampling.class_label <topic>`` conditions every sample on that topic."""
    topics = len(CharText(name="pydoc_topics", labels=True, block_size=16).class_names)  # per Python version
    tiny = {
        "model": {
            "init_args": {
                "net": {
                    "init_args": {
                        "n_layer": 1,
                        "n_head": 2,
                        "n_embd": 16,
                        "block_size": 16,
                        "num_classes": topics,
                    }
                },
                "sampling": {"max_new_tokens": 5},
            }
        },
        "data": {"init_args": {"block_size": 16, "batch_size": 4, "predict_samples": 2, "labels": True}},
        "trainer": {**TINY_CLI_TRAINER, "default_root_dir": str(tmp_path / "run")},
        "samples": {"num_samples": 2},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny))
    args = ["--config", TEXT_DEMO, "--config", str(path)]
    assert _run(["fit", *args]) == 0
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    names = ckpt["hyper_parameters"]["class_names"]
    assert len(names) == ckpt["hyper_parameters"]["num_classes"] == topics > 50 and "for" in names
    assert "sampling" not in ckpt["hyper_parameters"]  # class_label: a sampling setting, set at predict time
    assert _run(["predict", *args, "--ckpt_path", "last", "--model.sampling.class_label", "for"]) == 0
    assert len(list((tmp_path / "run" / "predictions").glob("sample_*.txt"))) == 2


# ---------------------------------------------------------------------- token sequences, target_offset 0


class _SelfPredicting(torch.nn.Module):
    """Logits at t from the tokens before t only (target_offset 0): a causal bag of previous tokens."""

    target_offset = 0

    def __init__(self, vocab_size: int, block_size: int) -> None:
        super().__init__()
        self.vocab_size, self.block_size = vocab_size, block_size
        self.emb = torch.nn.Embedding(vocab_size, vocab_size)
        self.bias = torch.nn.Parameter(torch.zeros(block_size, vocab_size))

    def forward(self, idx, cond=None):
        e = self.emb(idx)  # (B, N, V)
        before = torch.cumsum(e, 1) - e  # tokens < t only
        return before + self.bias


def test_token_sequences_are_split_by_the_nets_target_offset():
    seq = torch.randint(0, 5, (3, 8))
    labels = torch.tensor([0, 1, 0])
    gpt_model = NextToken(tiny_gpt(5), vocab_size=5, block_size=8)
    x, y, c, _ = gpt_model._unpack((seq, labels))
    assert torch.equal(x, seq[:, :-1]) and torch.equal(y, seq[:, 1:]) and c is None
    model = NextToken(_SelfPredicting(5, 8), vocab_size=5, block_size=8)
    x, y, c, _ = model._unpack((seq, labels))
    assert torch.equal(x, seq) and torch.equal(y, seq)
    with pytest.raises(
        ConfigError, match="model.net.block_size=8 positions but the data's sequences have block_size=6"
    ):
        NextToken(_SelfPredicting(5, 8), vocab_size=5, block_size=6)


def test_sequence_nll_nats_is_per_example_and_bpd_per_token(tmp_path):
    net = _SelfPredicting(4, 6)
    model = NextToken(net, vocab_size=4, block_size=6)
    seq = torch.randint(0, 4, (10, 6))
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(seq, torch.zeros(10).long()), batch_size=4
    )
    trainer = quiet_trainer(tmp_path)
    (result,) = trainer.test(model, data, verbose=False)
    with torch.no_grad():
        nll = F.cross_entropy(net(seq).flatten(0, 1), seq.flatten(), reduction="none").view(10, 6)
    assert result["test/nll_nats"] == pytest.approx(nll.sum(1).mean().item(), rel=1e-5)
    assert result["test/loss"] == pytest.approx(nll.mean().item(), rel=1e-5)
    assert result["test/bpd"] == pytest.approx(nll.mean().item() / math.log(2), rel=1e-5)


def test_in_place_sampling_fills_every_position_in_order_and_keeps_the_prompt():
    torch.manual_seed(0)
    net = _SelfPredicting(6, 10)
    model = NextToken(net, vocab_size=6, block_size=10)
    a = model.sample(3, generator=torch.Generator().manual_seed(1))
    b = model.sample(3, generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, 10) and torch.equal(a, b)
    with torch.no_grad():
        net.bias[4] = torch.tensor([0, 0, 0, 50.0, 0, 0])  # position 4 is (almost surely) token 3
    prompted = model.sample(2, prompt="5 1", generator=torch.Generator().manual_seed(2))
    assert prompted[:, :2].tolist() == [[5, 1], [5, 1]] and prompted[:, 4].tolist() == [3, 3]
    greedy = model.sample(2, temperature=0.0)
    with torch.no_grad():  # greedy: every token the argmax given the tokens before it
        assert torch.equal(net(greedy).argmax(-1), greedy)


@pytest.mark.parametrize("levels", [2, 256])
def test_a_uniform_model_scores_exactly_log2_levels_bits_per_dimension(levels, tmp_path):
    class Uniform(_SelfPredicting):
        def forward(self, idx, cond=None):
            return torch.zeros(*idx.shape, self.vocab_size) + 0 * self.bias.sum()  # (B, N, L) equal logits

    n = 12  # a 2 x 2 x 3 "image" per sequence
    model = NextToken(Uniform(levels, n), vocab_size=levels, block_size=n)
    pixels = torch.utils.data.TensorDataset(torch.randint(0, levels, (6, n)), torch.zeros(6).long())
    (result,) = quiet_trainer(tmp_path).test(
        model, torch.utils.data.DataLoader(pixels, batch_size=4), verbose=False
    )
    assert result["test/bpd"] == pytest.approx(math.log2(levels), abs=1e-6)
    assert result["test/nll_nats"] == pytest.approx(n * math.log(levels), rel=1e-6)
