"""Asking a fine-tuned next-token model (ar.chat): conversations as input, the response cut at the
template's stop in predict / generate / the service, the base model's vocabulary for fine-tuning
data, and a short CPU run that raises exact match on a toy task."""

import functools
import json

import pytest
import torch
import yaml
from helpers import TINY_CLI_TRAINER, quiet_trainer, run_cli

import lit_genai
from lit_genai import paradigm
from lit_genai.ar.chat import prompt_text, read_conversation, response
from lit_genai.ar.module import NextToken
from lit_genai.ar.task_evaluation import evaluate_task
from lit_genai.data.prompt_response import PromptResponse
from lit_genai.data.templates import TEMPLATES, render_prompt
from lit_genai.errors import ConfigError
from lit_genai.nn.transformer import GPT

TURNS = [
    {"role": "user", "content": "Echo 1."},
    {"role": "assistant", "content": "1"},
    {"role": "user", "content": "Echo 2."},
]


# ---------------------------------------------------------------------- pure functions


def test_a_conversation_is_read_from_a_file_or_taken_as_turns(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"messages": TURNS}))
    (tmp_path / "b.json").write_text(json.dumps(TURNS, indent=2))
    (tmp_path / "c.jsonl").write_text(json.dumps({"messages": TURNS}) + "\n")
    for source in ("a.json", "b.json", "c.jsonl"):
        assert read_conversation(str(tmp_path / source)) == TURNS
    assert read_conversation(TURNS) == TURNS


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("{not json", "is not one JSON value"),
        ("[]", "non-empty list of turns"),
        ('[{"role": "user"}]', "turn 0 needs string 'role' and 'content'"),
        (
            '[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]',
            "last turn is the assistant",
        ),
    ],
)
def test_a_bad_conversation_is_one_line(tmp_path, content, message):
    path = tmp_path / "turns.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message) as error:
        read_conversation(str(path))
    assert "\n" not in str(error.value)


def test_prompts_are_rendered_up_to_the_answer_and_responses_cut_at_the_stop():
    chatml = TEMPLATES["chatml"]
    rendered = prompt_text(chatml, None, TURNS)
    assert rendered == render_prompt(chatml, TURNS) and rendered.endswith("<|im_start|>assistant\n")
    assert prompt_text(chatml, "Echo 3.", None) == render_prompt(chatml, "Echo 3.")
    assert prompt_text(None, "Echo 3.", None) == "Echo 3."  # no template: as it is
    ids = [1, 2]
    assert prompt_text(chatml, ids, None) is ids  # token ids: as they are
    with pytest.raises(ConfigError, match="no template"):
        prompt_text(None, None, TURNS)
    assert prompt_text(chatml, "Echo 3.", TURNS) == rendered  # the conversation replaces a prompt
    assert response(rendered + "2<|im_end|>\nmore", rendered, chatml.stop) == ("2", True)
    assert response(rendered + "2 and on", rendered, chatml.stop) == ("2 and on", False)
    assert response("\n", "\n", "\n") == ("", False)  # nothing new yet


# ---------------------------------------------------------------------- the module


def chat_model(vocabulary, template="plain", seed=0):
    torch.manual_seed(seed)
    net = GPT(vocab_size=len(vocabulary), block_size=64, n_layer=1, n_head=2, n_embd=16)
    return NextToken(
        net,
        vocab_size=len(vocabulary),
        block_size=64,
        vocabulary=vocabulary,
        prompt_template={"prefix": "", "roles": dict(TEMPLATES[template].roles)},
        optimizer=functools.partial(torch.optim.AdamW, lr=3e-3),
    )


VOCAB = sorted(set("\n .0123456789ERchoau<|>_imnstr"))


def test_generate_returns_the_responses_predict_would_write():
    module = chat_model(VOCAB)
    module.media_decoder = lambda ids: ["".join(VOCAB[i] for i in row) for row in ids.tolist()]
    settings = dict(max_new_tokens=12, temperature=1.0)
    answers = lit_genai.generate(module, 4, seed=3, conversation=TURNS, **settings)
    rendered = render_prompt(module.template, TURNS)
    generators = paradigm.sample_generators(3, range(4))
    full = module.media_decoder(module.sample(4, generator=generators, conversation=TURNS, **settings))
    assert all(text.startswith(rendered) for text in full)
    expected = [response(text, rendered, "\n")[0] for text in full]
    assert answers == expected and all("\n" not in a for a in answers)
    # The same conversation given as a rendered text prompt draws the same tokens.
    plain = chat_model(VOCAB)
    plain.template = None
    same = plain.sample(4, generator=paradigm.sample_generators(3, range(4)), prompt=rendered, **settings)
    assert module.media_decoder(same) == full
    # A model without a template returns its whole text.
    assert plain.responses(["Echo 1.\n1\nx"]) == ["Echo 1.\n1\nx"]


def test_a_toy_task_gains_exact_match_in_a_short_cpu_run(tmp_path):
    """Fine-tuning on 'Echo <d>.' -> '<d> <d>' for 150 steps lifts greedy exact match on held-out
    prompts from 0 to at least 0.8 (digits repeat: the pattern, not the items, is learnt)."""
    records = [
        {"prompt": f"Echo {a}{b}.", "response": f"{a}{b} {a}{b}"} for a in range(10) for b in range(10)
    ]
    path = tmp_path / "echo.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    data = PromptResponse(path=str(path), block_size=24, batch_size=16, val_fraction=0.1)
    data.setup("fit")
    torch.manual_seed(0)
    net = GPT(vocab_size=data.vocab_size, block_size=24, n_layer=2, n_head=2, n_embd=32)
    module = NextToken(
        net,
        vocab_size=data.vocab_size,
        block_size=24,
        vocabulary=data.vocabulary,
        optimizer=functools.partial(torch.optim.AdamW, lr=3e-3),
    )
    examples = data.task_examples("val")
    before = evaluate_task(module, examples, 8)[0]["exact_match"]
    quiet_trainer(tmp_path, accelerator="cpu", max_steps=150, limit_val_batches=0).fit(
        module, datamodule=data
    )
    after = evaluate_task(module, examples, 8)[0]["exact_match"]
    assert before == 0.0 and after >= 0.8, (before, after)


# ---------------------------------------------------------------------- the base model's vocabulary


def test_fine_tuning_data_takes_the_base_models_vocabulary(tmp_path):
    base = [*sorted(set("Echo 0123456789.\nxyz")), "#"]  # not sorted as the data's own would be
    torch.save({"hyper_parameters": {"vocabulary": base}}, tmp_path / "base.ckpt")
    path = tmp_path / "e.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"Echo {i}.", "response": f"{i}"}) + "\n" for i in range(9))
    )
    data = PromptResponse(path=str(path), block_size=16, vocabulary_from=str(tmp_path / "base.ckpt"))
    assert data.vocabulary == base and data.vocab_size == len(base)
    assert data.encode("Echo 7.").tolist() == [base.index(c) for c in "Echo 7."]
    path.write_text(json.dumps({"prompt": "Echo!", "response": "Q"}) + "\n" + path.read_text())
    with pytest.raises(ConfigError, match=r"2 character\(s\) the base model never saw: '!', 'Q'"):
        PromptResponse(path=str(path), block_size=16, vocabulary_from=str(tmp_path / "base.ckpt"))
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        PromptResponse(path=str(path), vocabulary_from=str(tmp_path / "none.ckpt"))
    with pytest.raises(ConfigError, match="is for the char tokenizer"):
        PromptResponse(path=str(path), tokenizer="byte", vocabulary_from=str(tmp_path / "base.ckpt"))
    torch.save({"hyper_parameters": {}}, tmp_path / "bytes.ckpt")
    with pytest.raises(ConfigError, match="no char vocabulary"):
        PromptResponse(path=str(path), vocabulary_from=str(tmp_path / "bytes.ckpt"))


# ---------------------------------------------------------------------- the command line


def test_predict_writes_the_next_assistant_turn_of_a_conversation_file(tmp_path):
    records = [{"prompt": f"Echo {i}.", "response": f"{i} {i}"} for i in range(10)]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    vocab_size = PromptResponse(path=str(tmp_path / "sft.jsonl")).vocab_size
    config = {
        "model": {
            "class_path": "lit_genai.ar.module.NextToken",
            "init_args": {
                "net": {
                    "class_path": "lit_genai.nn.transformer.GPT",
                    "init_args": {
                        "vocab_size": vocab_size,
                        "block_size": 32,
                        "n_layer": 1,
                        "n_head": 2,
                        "n_embd": 16,
                    },
                },
                "sampling": {"max_new_tokens": 10, "temperature": 1.0},
            },
        },
        "data": {
            "class_path": "lit_genai.data.prompt_response.PromptResponse",
            "init_args": {
                "path": str(tmp_path / "sft.jsonl"),
                "block_size": 32,
                "batch_size": 4,
                "predict_samples": 3,
            },
        },
        "trainer": {**TINY_CLI_TRAINER, "default_root_dir": str(tmp_path / "run")},
    }
    (tmp_path / "chat.yaml").write_text(yaml.safe_dump(config))
    args = ["--config", str(tmp_path / "chat.yaml")]
    assert run_cli(["fit", *args]) == 0
    turns = [
        {"role": "user", "content": "Echo 1."},
        {"role": "assistant", "content": "1 1"},
        {"role": "user", "content": "Echo 2."},
    ]
    (tmp_path / "turns.json").write_text(json.dumps({"messages": turns}))
    predict = [
        "predict",
        *args,
        "--ckpt_path",
        "last",
        "--model.sampling.conversation",
        str(tmp_path / "turns.json"),
    ]
    assert run_cli(predict) == 0
    files = sorted((tmp_path / "run" / "predictions").glob("sample_*.txt"))
    assert len(files) == 3
    module = lit_genai.load(tmp_path / "run")
    expected = lit_genai.generate(module, 3, seed=0, conversation=turns, max_new_tokens=10, temperature=1.0)
    assert [f.read_text() for f in files] == expected
    assert all("\n" not in text and not text.startswith("Echo") for text in expected)


# ---------------------------------------------------------------------- the service


def test_the_service_answers_a_prompt_or_conversation_with_the_response_alone():
    """A prompt in, text out: the served text (and the streamed chunks, which stop at the template's
    stop) is ``lit_genai.generate``'s response; a conversation comes as turns, never as a file on
    the server, and counts against the prompt limit."""
    from lit_genai.serve.catalog import describe
    from lit_genai.serve.draw import draw, stream_text
    from lit_genai.serve.requests import Limits, RequestError, parse_request

    module = chat_model(VOCAB)
    module.media_decoder = lambda ids: ["".join(VOCAB[i] for i in row) for row in ids.tolist()]
    module.eval()
    catalog = {"chat": describe("chat", module)}
    limits = Limits()
    options = {"max_new_tokens": 16, "temperature": 1.0}
    job = parse_request({"prompt": "Echo 2.", "n": 2, "seed": 5, "options": options}, catalog, limits)
    (texts,) = draw(module, [job], max_samples=4)
    assert texts == lit_genai.generate(module, 2, seed=5, prompt="Echo 2.", **options)
    events = list(stream_text(module, job, tokens=3))
    for index, text in enumerate(texts):
        chunks = [e["text"] for e in events if e["index"] == index and not e.get("done")]
        (done,) = [e["text"] for e in events if e["index"] == index and e.get("done")]
        assert "".join(chunks) == done == text
    body = {"n": 1, "options": {**options, "conversation": TURNS}}
    (answer,) = draw(module, [parse_request(body, catalog, limits)], max_samples=4)
    assert answer == lit_genai.generate(module, 1, conversation=TURNS, **options)
    with pytest.raises(RequestError, match="names a file on the server"):
        parse_request({"options": {"conversation": "/etc/hosts"}}, catalog, limits)
    with pytest.raises(RequestError, match="the conversation has more than the limit of 10"):
        parse_request(body, catalog, Limits(max_prompt=10))


def test_a_json_list_of_alpaca_records_reads_as_json_lines(tmp_path):
    records = [{"instruction": f"Add {i}.", "input": "", "output": f"{i}"} for i in range(6)]
    (tmp_path / "alpaca.json").write_text(json.dumps(records, indent=2))
    (tmp_path / "alpaca.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    listed = PromptResponse(path=str(tmp_path / "alpaca.json"), template="alpaca")
    lines = PromptResponse(path=str(tmp_path / "alpaca.jsonl"), template="alpaca")
    assert listed.conversations == lines.conversations
    (tmp_path / "bad.json").write_text(json.dumps([*records, {"instruction": "x"}]))
    with pytest.raises(ConfigError, match="bad.json record 6: the Alpaca record has no string field"):
        PromptResponse(path=str(tmp_path / "bad.json"))
