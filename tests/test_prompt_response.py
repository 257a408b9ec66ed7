"""Prompt/response data (data.prompt_response, data.templates, data.language_tasks) and NextToken's loss
over the response tokens only: templates, the loss mask, truncation, bad input, the offline tasks,
and a hand computation of the masked loss and validation metrics."""

import functools
import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import quiet_trainer

from lit_genai.ar.module import NextToken
from lit_genai.data.language_tasks import TASKS, build_task, number_records
from lit_genai.data.prompt_response import IGNORE_INDEX, PromptResponse
from lit_genai.data.templates import TEMPLATES, get_template, render, render_prompt
from lit_genai.errors import ConfigError
from lit_genai.nn.transformer import GPT

RECORDS = [
    {"instruction": "Add one.", "input": "41", "output": "42"},
    {"prompt": "Say hi.", "response": "hi"},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Two plus two?"},
            {"role": "assistant", "content": "four"},
            {"role": "user", "content": "And three?"},
            {"role": "assistant", "content": "five"},
        ]
    },
] + [{"prompt": f"Echo {i}.", "response": f"{i}"} for i in range(7)]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture
def jsonl(tmp_path):
    return write_jsonl(tmp_path / "sft.jsonl", RECORDS)


def all_conversations(data):
    return [c for split in ("train", "val") for c in data.conversations[split]]


# ---------------------------------------------------------------------- templates


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_template_round_trip(name):
    """The rendered prompt plus the response plus the template's end is the whole training text,
    and only the assistant contents (with their end) are trained on."""
    template = get_template(name)
    messages = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
    segments = render(template, messages)
    text = "".join(s.text for s in segments)
    prompt = render_prompt(template, "What is 2+2?")
    assert text == prompt + "4" + template.end
    assert "".join(s.text for s in segments if s.trained) == "4" + template.end
    assert template.stop and template.stop in template.end


def test_template_from_a_yaml_mapping():
    template = get_template(
        {"prefix": "# chat\n", "roles": {"user": "Q: {content}\n", "assistant": "A: {content}\n"}}
    )
    assert render_prompt(template, "hi") == "# chat\nQ: hi\nA: "
    assert template.end == "\n" and template.stop == "\n"
    with pytest.raises(ConfigError, match="exactly one \\{content\\}"):
        get_template({"user": "Q:", "assistant": "A: {content}"})
    with pytest.raises(ConfigError, match="no 'assistant' turn"):
        get_template({"user": "Q: {content}"})
    with pytest.raises(ConfigError, match="not a template"):
        get_template("vicuna")


# ---------------------------------------------------------------------- the loss mask


@pytest.mark.parametrize("tokenizer", ["char", "byte"])
def test_the_mask_covers_exactly_the_prompt_tokens(jsonl, tokenizer):
    data = PromptResponse(
        path=jsonl, template="chatml", tokenizer=tokenizer, block_size=200, batch_size=4, val_fraction=0.2
    )
    assert data.vocab_size == (256 if tokenizer == "byte" else len(data.vocabulary))
    template = data.template
    for messages in all_conversations(data):
        x, y, cut = data.example(messages)
        assert not cut
        text = "".join(s.text for s in render(template, messages))
        ids = data.encode(text)
        n = len(ids)
        assert torch.equal(x[: n - 1], ids[:-1])  # x is the text, then padding 0
        assert (x[n - 1 :] == 0).all()
        assert (y[n - 1 :] == IGNORE_INDEX).all()  # padding is never a target
        # The scored targets, decoded in order, are the assistant turns' contents and ends.
        scored = data.decode(y[y != IGNORE_INDEX])[0]
        assert scored == "".join(m["content"] + template.end for m in messages if m["role"] == "assistant")
        # Every scored target is the true next token.
        kept = y[: n - 1] != IGNORE_INDEX
        assert torch.equal(y[: n - 1][kept], ids[1:][kept])
    # The last turn's prompt is what task_examples gives; prompt + response + end is the text.
    multi = next(c for c in all_conversations(data) if len(c) == 5)
    assert data.render_prompt(multi[:4]) + "five" + template.end == "".join(
        s.text for s in render(template, multi)
    )


def test_without_prompt_masking_every_token_but_padding_is_a_target(jsonl):
    data = PromptResponse(path=jsonl, mask_prompt=False, block_size=200, val_fraction=0.2)
    for messages in all_conversations(data):
        x, y, _ = data.example(messages)
        ids = data.encode("".join(s.text for s in render(data.template, messages)))
        n = len(ids)
        assert torch.equal(y[: n - 1], ids[1:])
        assert (y[n - 1 :] == IGNORE_INDEX).all()


def test_truncation_is_one_warning_that_counts(tmp_path):
    records = [{"prompt": "p" * 5, "response": "r" * 3}] * 6 + [{"prompt": "p" * 30, "response": "long"}] * 3
    records += [{"prompt": "p" * 12, "response": "r" * 20}] * 2
    data = PromptResponse(
        path=write_jsonl(tmp_path / "t.jsonl", records), block_size=16, val_fraction=0.1, seed=3
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data.setup()
    messages = [str(w.message) for w in caught if "were cut" in str(w.message)]
    assert len(messages) == 1
    assert messages[0].startswith("data.init_args.path=") and "5 of 11 examples" in messages[0]
    assert "(3 lost their whole response" in messages[0]
    assert data.truncated == 5 and data.dropped == 3
    n_kept = len(data.train_set) + len(data.val_set)
    assert n_kept == 11 - 3
    for x, y in data.train_set:  # every kept example still trains on something, and fits
        assert x.shape == (16,) and (y != IGNORE_INDEX).any()


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "a", "response": "b"', "sft.jsonl line 2: not valid JSON"),
        ('{"instruction": "a"}', "sft.jsonl line 2: the Alpaca record has no string field 'output'"),
        ('{"prompt": "a", "response": "  "}', "sft.jsonl line 2: the response ('response') is empty"),
        ('{"text": "a"}', "sft.jsonl line 2: a record needs 'instruction' and 'output'"),
        (
            '{"messages": [{"role": "user", "content": "a"}]}',
            "sft.jsonl line 2: the messages have no 'assistant'",
        ),
    ],
)
def test_bad_input_is_one_line(tmp_path, line, message):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps(RECORDS[1]) + "\n" + line + "\n")
    with pytest.raises(ConfigError) as err:
        PromptResponse(path=str(path))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_role_the_template_does_not_know_is_one_line(tmp_path):
    tool = {"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}
    path = write_jsonl(tmp_path / "sft.jsonl", RECORDS + [tool])
    with pytest.raises(
        ConfigError, match="sft.jsonl line 11: template 'chatml' does not know the role 'tool'"
    ) as err:
        PromptResponse(path=path, template="chatml")
    assert "\n" not in str(err.value)
    roles = {role: f"{role}: {{content}}\n" for role in ("system", "user", "input", "tool", "assistant")}
    data = PromptResponse(path=path, template={"roles": roles})
    assert data.template.name == "custom"


def test_exactly_one_source():
    with pytest.raises(ConfigError, match="exactly one of"):
        PromptResponse()


# ---------------------------------------------------------------------- tasks


@pytest.mark.parametrize("name", list(TASKS))
def test_tasks_are_deterministic_and_hold_items_out(name):
    first, again, other = build_task(name, seed=0), build_task(name, seed=0), build_task(name, seed=1)
    assert first == again and first != other
    prompts = {split: {r["prompt"] for r in first[split]} for split in first}
    assert prompts["train"].isdisjoint(prompts["val"]) and prompts["train"].isdisjoint(prompts["test"])
    assert prompts["val"].isdisjoint(prompts["test"])
    assert all(r["response"].strip() for split in first.values() for r in split)


def test_held_out_numbers_never_train():
    from num2words import num2words

    splits = build_task("numbers_fr", seed=3, val_fraction=0.1)
    words = {num2words(n, lang="en"): n for n in range(1000)}
    number = {split: {words[r["prompt"].split(": ", 1)[1]] for r in splits[split]} for split in splits}
    assert len(number["val"]) == len(number["test"]) == 100 and len(number["train"]) == 800
    assert number["train"].isdisjoint(number["val"] | number["test"])
    assert number_records("de", 3)[3] == {"prompt": "translate to German: three", "response": "drei"}
    assert {"prompt": "translate to French: seventy-one", "response": "soixante et onze"} in number_records(
        "fr"
    )
    data = PromptResponse(task="numbers_fr", seed=3, block_size=96)
    examples = data.task_examples("test")
    assert [p for p, _ in examples] == [render_prompt(data.template, r["prompt"]) for r in splits["test"]]
    assert [r for _, r in examples] == [r["response"] for r in splits["test"]]


# ---------------------------------------------------------------------- NextToken on prompt/response batches


def tiny_model(data):
    torch.manual_seed(0)
    net = GPT(vocab_size=data.vocab_size, block_size=data.block_size, n_layer=1, n_head=2, n_embd=16)
    return NextToken(
        net,
        vocab_size=data.vocab_size,
        block_size=data.block_size,
        vocabulary=data.vocabulary,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
    )


def hand_nll(model, data, conversations):
    """Summed NLL (nats) and count of the assistant tokens, from the strings alone."""
    total, count = 0.0, 0
    for messages in conversations:
        before, response = messages[:-1], messages[-1]["content"]
        prompt = data.encode(data.render_prompt(before))
        answer = data.encode(response + data.template.end)
        ids = torch.cat([prompt, answer])
        with torch.no_grad():
            logp = F.log_softmax(model.net(ids[None, :-1])[0].double(), dim=-1)  # (L - 1, V)
        rows = torch.arange(len(prompt) - 1, len(ids) - 1)  # the positions that predict the answer
        total -= logp[rows, ids[rows + 1]].sum().item()
        count += len(answer)
    return total, count


def test_next_token_loss_is_the_mean_nll_of_the_response_tokens(tmp_path):
    records = [{"prompt": f"Echo {i} and {i}.", "response": f"{i}{i} ok"} for i in range(12)]
    data = PromptResponse(
        path=write_jsonl(tmp_path / "e.jsonl", records), block_size=32, batch_size=5, val_fraction=0.25
    )
    data.setup()
    model = tiny_model(data)
    x, y = next(iter(data.val_dataloader()))
    assert x.shape == y.shape == (3, 32) and x.dtype == y.dtype == torch.int64
    total, count = hand_nll(model, data, data.conversations["val"])
    loss = model.training_step((x, y), 0)
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    # Validation: loss, ppl, bpd over the response tokens only.
    metrics = quiet_trainer(tmp_path, accelerator="cpu").validate(model, datamodule=data, verbose=False)[0]
    assert metrics["val/loss"] == pytest.approx(total / count, rel=1e-5)
    assert metrics["val/nll_nats"] == pytest.approx(total / count, rel=1e-5)
    assert metrics["val/ppl"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert metrics["val/bpd"] == pytest.approx(total / count / math.log(2), rel=1e-5)
    # A training step runs and lowers the masked loss on the training batch.
    x, y = next(iter(data.train_dataloader()))

    def masked_loss():  # torch's own mean over the targets not -100
        with torch.no_grad():
            return F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()

    before = masked_loss()
    quiet_trainer(tmp_path, accelerator="cpu", max_steps=20, limit_val_batches=0).fit(model, datamodule=data)
    assert masked_loss() < before


def test_char_vocabulary_decodes_and_restores_from_the_state(jsonl):
    data = PromptResponse(path=jsonl, template="alpaca", block_size=256, val_fraction=0.2)
    text = data.render_prompt("Add one.")
    assert data.decode(data.encode(text))[0] == text
    state = data.state_dict()
    assert state["tokenizer"] == "char" and state["vocabulary"] == data.vocabulary
    assert state["template"]["roles"]["assistant"] == "### Response:\n{content}\n\n"
    other = PromptResponse(path=jsonl, template="alpaca", block_size=256, val_fraction=0.2)
    other.load_state_dict(state)
    assert other.vocabulary == data.vocabulary


def test_a_text_prompt_is_rendered_with_the_datas_template():
    """``NextToken(prompt_template=data.prompt_template)`` (what the command line links) renders a
    text prompt as the training prompts were: its samples equal those of the same net given the
    rendered prompt; a prompt of token ids is taken as it is."""
    from lit_genai.data.templates import render_prompt
    from lit_genai.nn.transformer import GPT

    data = PromptResponse(task="numbers_fr", block_size=96)
    data.setup("fit")
    torch.manual_seed(0)
    net = GPT(vocab_size=data.vocab_size, block_size=96, n_layer=1, n_head=2, n_embd=16)
    kwargs = dict(vocab_size=data.vocab_size, block_size=96, vocabulary=data.vocabulary)
    templated = NextToken(net, prompt_template=data.prompt_template, **kwargs)
    plain = NextToken(net, **kwargs)
    text = "translate to French: five hundred and twelve"
    rendered = render_prompt(data.template, text)
    assert rendered == text + "\n"  # the plain template: the user's line, then the answer's
    draw = dict(max_new_tokens=4, temperature=0.0)
    assert torch.equal(templated.sample(1, prompt=text, **draw), plain.sample(1, prompt=rendered, **draw))
    ids = plain.encode(text)
    assert torch.equal(templated.sample(1, prompt=ids, **draw), plain.sample(1, prompt=ids, **draw))
