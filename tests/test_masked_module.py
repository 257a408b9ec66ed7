"""MaskedTokens: configuration checks, the masked-only loss, evaluation masks and metrics, short
trainings that lower the loss (token sequences and CharText), sampling, text infill, predict."""

import functools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers import quiet_trainer
from lightning.pytorch import LightningDataModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_genai import paradigm
from lit_genai.data.text import CharText
from lit_genai.errors import ConfigError
from lit_genai.masked.module import EVAL_SEED, MaskedSampling, MaskedTokens, random_masks
from lit_genai.masked.schedules import num_to_mask
from lit_genai.nn.transformer import GPT

V, N = 8, 16


def tiny_gpt(vocab_size: int = V + 1, block_size: int = N, **kwargs) -> GPT:
    torch.manual_seed(0)
    args = dict(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32, causal=False)
    return GPT(**{**args, **kwargs})


def adamw(lr: float = 3e-3):
    return functools.partial(torch.optim.AdamW, lr=lr)


class PositionLogits(nn.Module):
    """A net that ignores its input: learned logits (N, V + 1) per position, the [MASK] one huge."""

    vocab_size = V + 1

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(N, V + 1, generator=torch.Generator().manual_seed(0)))
        with torch.no_grad():
            self.table[:, V] = 50.0

    def forward(self, idx, cond=None):
        return self.table.expand(idx.shape[0], -1, -1)


class Tokens(LightningDataModule):
    """Token sequences (tokens (B, N), labels (B,)) like an image tokenizer's: each of 3 classes has
    a template of N tokens, and a sequence is its class's template with a quarter of the positions
    replaced by random tokens."""

    vocab_size, block_size, num_classes = V, N, 3

    def __init__(self, n: int = 512) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        templates = torch.randint(0, V, (3, N), generator=g)
        self.labels = torch.randint(0, 3, (n,), generator=g)
        noise = torch.rand(n, N, generator=g) < 0.25
        self.tokens = torch.where(noise, torch.randint(0, V, (n, N), generator=g), templates[self.labels])

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.tokens, self.labels), batch_size=32, shuffle=True)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.tokens[:128], self.labels[:128]), batch_size=64)


@pytest.fixture(scope="module")
def text():
    return CharText(name="pydoc_topics", block_size=32, batch_size=16, steps_per_epoch=40)


# ---------------------------------------------------------------------- configuration


def test_the_net_needs_one_more_id_than_the_data_for_the_mask():
    with pytest.raises(ConfigError, match=r"set model\.init_args\.net\.init_args\.vocab_size: 9$"):
        MaskedTokens(tiny_gpt(vocab_size=V), vocab_size=V, block_size=N)


def test_a_causal_net_and_a_short_context_are_config_errors():
    with pytest.raises(ConfigError, match="causal: false"):
        MaskedTokens(tiny_gpt(causal=True), vocab_size=V, block_size=N)
    with pytest.raises(ConfigError, match="block_size: 32"):
        MaskedTokens(tiny_gpt(), vocab_size=V, block_size=32)
    with pytest.raises(ConfigError, match="num_classes"):
        MaskedTokens(tiny_gpt(num_classes=3), vocab_size=V, block_size=N, num_classes=10)


def test_sampling_settings_stay_out_of_the_hyperparameters():
    sampling = MaskedSampling(steps=3, guidance=0.0)
    model = MaskedTokens(tiny_gpt(), vocab_size=V, block_size=N, sampling=sampling, label_smoothing=0.1)
    assert "sampling" not in model.hparams and set(MaskedSampling.names()).isdisjoint(model.hparams)
    assert model.hparams.label_smoothing == 0.1 and model.hparams.schedule == "cosine"
    assert model.sampling_settings() == {
        "steps": 3,
        "choice_temperature": 4.5,
        "temperature": 1.0,
        "top_k": None,
        "guidance": 0.0,
        "prompt": None,
        "hole": "_",
        "caption": None,
        "init_image": None,
        "mask": None,
        "tokenizer": None,
    }
    assert isinstance(model, paradigm.GenerativeModule) and paradigm.is_generative(model)
    assert (model.modality, model.ema_target, model.num_classes, model.mask_id) == ("image", "net", 0, V)


# ---------------------------------------------------------------------- the loss


def test_random_masks_hold_exactly_the_stated_number_uniformly_placed():
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, N + 1, (4000,), generator=g)
    masks = random_masks(counts, torch.rand(4000, N, generator=g))
    assert torch.equal(masks.sum(1), counts)
    # Each position is masked with probability E[k] / N = 1/2 (k uniform on 0..N): +- 4 sigma.
    share = masks.float().mean(0)
    assert bool(((share - 0.5).abs() < 4 * math.sqrt(0.25 / 4000)).all())


def test_training_masks_ceil_gamma_r_n_tokens_per_sequence():
    seen = []
    net = tiny_gpt()
    net.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    model = MaskedTokens(net, vocab_size=V, block_size=N, schedule="linear")
    tokens = torch.randint(0, V, (64, N))
    torch.manual_seed(3)
    model.training_step((tokens, torch.zeros(64, dtype=torch.long)), 0)
    torch.manual_seed(3)
    r = torch.rand(64)  # the step's first draw: r ~ U[0, 1) per sequence
    (inputs,) = seen
    assert torch.equal((inputs == V).sum(1), num_to_mask(r, N, "linear"))
    assert torch.equal(inputs[inputs != V], tokens[inputs != V])  # the rest is the data


def test_the_loss_is_the_cross_entropy_of_the_masked_positions_only():
    model = MaskedTokens(PositionLogits(), vocab_size=V, block_size=N, label_smoothing=0.1)
    tokens = torch.randint(0, V, (32, N))
    labels = torch.zeros(32, dtype=torch.long)
    torch.manual_seed(1)
    loss = model.training_step((tokens, labels), 0)
    torch.manual_seed(1)
    r, scores = torch.rand(32), torch.rand(32, N)
    masked = random_masks(num_to_mask(r, N, "cosine"), scores)
    logits = model.net.table[:, :V].expand(32, -1, -1)  # the [MASK] logit is sliced off
    expected = F.cross_entropy(logits[masked], tokens[masked], label_smoothing=0.1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # Changing the targets where nothing is masked changes nothing; at a masked position it does.
    changed = torch.where(masked, tokens, (tokens + 1) % V)
    torch.manual_seed(1)
    assert model.training_step((changed, labels), 0).item() == loss.item()
    changed = torch.where(masked, (tokens + 1) % V, tokens)
    torch.manual_seed(1)
    assert model.training_step((changed, labels), 0).item() != pytest.approx(loss.item())


def test_label_dropout_gives_the_null_label():
    seen = []
    net = tiny_gpt(num_classes=3)
    net.register_forward_hook(lambda m, args, out: seen.append(args[1].clone()))
    model = MaskedTokens(net, vocab_size=V, block_size=N, num_classes=3, p_uncond=1.0)
    model.training_step((torch.randint(0, V, (8, N)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])), 0)
    assert seen[0].tolist() == [3] * 8


def test_p_uncond_per_condition_name_drops_labels_and_an_unknown_name_is_one_line():
    seen = []
    net = tiny_gpt(num_classes=3)
    net.register_forward_hook(lambda m, args, out: seen.append(args[1].clone()))
    model = MaskedTokens(net, vocab_size=V, block_size=N, num_classes=3, p_uncond={"label": 0.5})
    labels = torch.arange(64) % 3
    torch.manual_seed(0)
    model.training_step((torch.randint(0, V, (64, N)), labels), 0)
    dropped = seen[0] == 3  # the null label
    assert 10 < int(dropped.sum()) < 54  # about half of the 64 rows
    assert torch.equal(seen[0][~dropped], labels[~dropped])  # the others keep their label
    with pytest.raises(ConfigError, match=r"p_uncond names text, which the model does not use") as error:
        MaskedTokens(
            tiny_gpt(num_classes=3), vocab_size=V, block_size=N, num_classes=3, p_uncond={"text": 0.5}
        )
    assert "\n" not in str(error.value)


def test_text_batches_use_x_and_plain_tensors_are_sequences(text):
    model = MaskedTokens(tiny_gpt(text.vocab_size + 1, 32), vocab_size=text.vocab_size, block_size=32)
    text.setup("fit")
    x, y = next(iter(text.train_dataloader()))
    torch.manual_seed(0)
    pair = model.training_step((x, y), 0)
    torch.manual_seed(0)
    assert model.training_step(x, 0).item() == pair.item()


def test_validation_scores_fixed_masks_and_reports_masked_accuracy(tmp_path):
    data = Tokens()
    model = MaskedTokens(tiny_gpt(num_classes=3), vocab_size=V, block_size=N, num_classes=3)
    trainer = quiet_trainer(tmp_path)
    first = trainer.validate(model, data, verbose=False)[0]
    again = trainer.validate(model, data, verbose=False)[0]
    assert first == again  # the same positions each time
    # Against the closed form: NLL and argmax accuracy over every masked token of both batches.
    nll = correct = count = 0.0
    with torch.no_grad():
        for k, (tokens, labels) in enumerate(data.val_dataloader()):
            masked = model.eval_masks(tokens, k)
            logits = model.net(torch.where(masked, V, tokens), labels)[..., :V][masked]
            nll += F.cross_entropy(logits, tokens[masked], reduction="sum").item()
            correct += (logits.argmax(-1) == tokens[masked]).sum().item()
            count += masked.sum().item()
    assert first["val/loss"] == pytest.approx(nll / count, rel=1e-5)
    assert first["val/acc"] == pytest.approx(correct / count, rel=1e-6)
    assert first["val/loss"] == pytest.approx(math.log(V), abs=0.05)  # a fresh net: near uniform


def _masks_of_seed(seed: int, B: int) -> torch.Tensor:
    """The (B, N) evaluation masks drawn from ``manual_seed(seed)`` (cosine schedule)."""
    g = torch.Generator().manual_seed(seed)
    r, scores = torch.rand(B, generator=g), torch.rand((B, N), generator=g)
    return random_masks(num_to_mask(r, N, "cosine"), scores)


def test_evaluation_masks_are_fixed_per_batch_and_distinct_per_rank():
    model = MaskedTokens(tiny_gpt(), vocab_size=V, block_size=N)
    tokens = torch.randint(0, V, (32, N))
    alone = model.eval_masks(tokens, 3)  # outside a Trainer: seed EVAL_SEED + batch_idx
    assert torch.equal(alone, _masks_of_seed(EVAL_SEED + 3, 32)) and torch.equal(
        model.eval_masks(tokens, 3), alone
    )
    try:
        model._trainer = SimpleNamespace(world_size=1, global_rank=0)
        assert torch.equal(model.eval_masks(tokens, 3), alone)  # one rank: as before
        masks = []
        for rank in (0, 1):
            trainer = SimpleNamespace(world_size=2, global_rank=rank)
            model._trainer = trainer
            masked = model.eval_masks(tokens, 3)
            g = paradigm.evaluation_generator(trainer, 3, EVAL_SEED)
            r, scores = torch.rand(32, generator=g), torch.rand((32, N), generator=g)
            assert torch.equal(masked, random_masks(num_to_mask(r, N, "cosine"), scores))
            assert torch.equal(masked, _masks_of_seed(EVAL_SEED + 3 * 2 + rank, 32))  # batch_idx * W + rank
            masks.append(masked)
        assert not torch.equal(masks[0], masks[1])  # each rank scores its own positions
    finally:
        model._trainer = None


# ---------------------------------------------------------------------- short trainings


def test_a_short_run_on_token_sequences_lowers_the_loss(tmp_path):
    data = Tokens()
    model = MaskedTokens(
        tiny_gpt(num_classes=3), vocab_size=V, block_size=N, num_classes=3, optimizer=adamw()
    )
    trainer = quiet_trainer(tmp_path, max_steps=60, limit_val_batches=2)
    before = trainer.validate(model, data, verbose=False)[0]
    trainer.fit(model, data)
    after = trainer.validate(model, data, verbose=False)[0]
    assert after["val/loss"] < before["val/loss"] - 0.5
    assert after["val/acc"] > before["val/acc"] + 0.2


def test_a_short_run_on_char_text_lowers_the_loss(text, tmp_path):
    model = MaskedTokens(
        tiny_gpt(text.vocab_size + 1, 32),
        vocab_size=text.vocab_size,
        block_size=32,
        vocabulary=text.vocabulary,
        modality="text",
        optimizer=adamw(),
    )
    trainer = quiet_trainer(tmp_path, max_steps=40, limit_val_batches=2)
    before = trainer.validate(model, text, verbose=False)[0]
    trainer.fit(model, text)
    after = trainer.validate(model, text, verbose=False)[0]
    assert after["val/loss"] < before["val/loss"] - 0.8  # from about ln 103 = 4.6


# ---------------------------------------------------------------------- sampling


def test_samples_are_block_size_ids_of_the_data_and_seeded():
    model = MaskedTokens(
        tiny_gpt(num_classes=3), vocab_size=V, block_size=N, num_classes=3, sampling=MaskedSampling(steps=4)
    )
    g = functools.partial(paradigm.sample_generators, 5)
    out = model.sample(6, cond=torch.arange(6) % 3, generator=g(range(6)))
    assert out.shape == (6, N) and out.dtype == torch.long
    assert bool(((out >= 0) & (out < V)).all())
    assert torch.equal(out, model.sample(6, cond=torch.arange(6) % 3, generator=g(range(6))))
    guided = model.sample(6, cond=torch.arange(6) % 3, generator=g(range(6)), guidance=3.0)
    assert guided.shape == (6, N) and not torch.equal(guided, out)
    assert model.sample(2, generator=g(range(2))).shape == (2, N)  # the null label


def test_sample_options_are_the_settings_names_and_an_unknown_one_is_one_line():
    model = MaskedTokens(tiny_gpt(), vocab_size=V, block_size=N, sampling=MaskedSampling(steps=2))
    assert model.sampling_settings(steps=5, temperature=0.5)["steps"] == 5
    assert model.sampling.steps == 2  # a call's options leave the module's settings alone
    with pytest.raises(
        ConfigError, match=r"unknown sampling option\(s\) stepz for MaskedSampling; the options are: steps, "
    ) as error:
        model.sample(1, stepz=3)
    assert "\n" not in str(error.value)
    model.sampling = model.sampling.replace(temperature=0.0, choice_temperature=0.0)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(model.sample(2, generator=g), model.sample(2, temperature=0.0, choice_temperature=0.0))


def test_predict_draws_sample_i_from_seed_plus_i_with_label_i_mod_classes():
    model = MaskedTokens(
        tiny_gpt(num_classes=3),
        vocab_size=V,
        block_size=N,
        num_classes=3,
        sampling=MaskedSampling(steps=3),
        seed=9,
    )
    batch = model.predict_step(torch.arange(4))
    alone = model.sample(1, cond=torch.tensor([2]), generator=paradigm.sample_generators(9, [2]))
    assert torch.equal(batch[2:3], alone)


def test_a_checkpoint_samples_without_the_data(tmp_path):
    data = Tokens()
    model = MaskedTokens(
        tiny_gpt(num_classes=3), vocab_size=V, block_size=N, num_classes=3, sampling=MaskedSampling(steps=3)
    )
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0, enable_checkpointing=True)
    trainer.fit(model, data)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = MaskedTokens.load_from_checkpoint(
        path, net=tiny_gpt(num_classes=3), weights_only=True, sampling=MaskedSampling(steps=3)
    )
    assert loaded.hparams == model.hparams and "sampling" not in loaded.hparams
    cond = torch.tensor([0, 1, 2])
    assert torch.equal(
        loaded.sample(3, cond=cond, generator=torch.Generator().manual_seed(0)),
        model.sample(3, cond=cond, generator=torch.Generator().manual_seed(0)),
    )


def test_text_infill_keeps_the_prompt_characters(text):
    model = MaskedTokens(
        tiny_gpt(text.vocab_size + 1, 32),
        vocab_size=text.vocab_size,
        block_size=32,
        vocabulary=text.vocabulary,
        modality="text",
        sampling=MaskedSampling(steps=5),
    )
    prompt = "The __ statement_is"
    (sample,) = model.decode(model.sample(1, prompt=prompt, generator=torch.Generator().manual_seed(0)))
    assert len(sample) == 32
    for i, char in enumerate(prompt):
        if char != "_":
            assert sample[i] == char
    assert model.decode(text.encode("abc")[None]) == text.decode(text.encode("abc")[None])


def test_prompts_are_checked_and_token_prompts_take_holes():
    model = MaskedTokens(
        tiny_gpt(), vocab_size=V, block_size=N, vocabulary=list("abcdefgh"), sampling=MaskedSampling(steps=2)
    )
    assert model.encode_prompt("ab_c").tolist() == [0, 1, V, 2]
    assert model.encode_prompt(torch.tensor([3, -1, 4])).tolist() == [3, V, 4]
    with pytest.raises(ConfigError, match="outside the vocabulary: 'z'"):
        model.encode_prompt("az")
    with pytest.raises(ConfigError, match="more than block_size=16"):
        model.encode_prompt("a" * 17)
    ids = MaskedTokens(tiny_gpt(), vocab_size=V, block_size=N)
    assert ids.encode_prompt("1 _ 3").tolist() == [1, V, 3]
    with pytest.raises(ConfigError, match="token id 9"):
        ids.encode_prompt("1 9")
    out = ids.sample(3, prompt="1 _ 3", generator=torch.Generator().manual_seed(0))
    assert out[:, 0].tolist() == [1, 1, 1] and out[:, 2].tolist() == [3, 3, 3]
