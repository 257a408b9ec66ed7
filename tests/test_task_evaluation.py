"""evaluate_task (lit_genai.ar.task_evaluation): greedy answers of a tiny untrained char GPT are
deterministic, equal a hand-written argmax loop cut at the newline, and score exact_match 1 against
themselves and 0 against other text."""

import pytest
import torch

from lit_genai.ar.module import NextToken
from lit_genai.ar.task_evaluation import evaluate_task, first_answer
from lit_genai.errors import ConfigError
from lit_genai.nn.lora import LoRAConfig, lora_layers
from lit_genai.nn.transformer import GPT

VOCABULARY = list("\n abcdefghijklmnopqrstuvwxyz:=?0123456789")
BLOCK = 32


def char_model(**kwargs) -> NextToken:
    torch.manual_seed(3)
    net = GPT(vocab_size=len(VOCABULARY), block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)
    return NextToken(
        net, vocab_size=len(VOCABULARY), block_size=BLOCK, vocabulary=VOCABULARY, **kwargs
    ).eval()


def argmax_answer(model: NextToken, prompt: str, max_new_tokens: int) -> str:
    """Greedy decoding by hand: no cache, the full context every step, stop at the first newline."""
    idx = torch.tensor([[VOCABULARY.index(c) for c in prompt]])  # (1, T0)
    for _ in range(max_new_tokens):
        next_id = model.net(idx[:, -BLOCK:])[0, -1].argmax()
        idx = torch.cat([idx, next_id.view(1, 1)], dim=1)
    text = "".join(VOCABULARY[i] for i in idx[0, len(prompt) :].tolist())
    return text.split("\n")[0]


PROMPTS = ["question: abc?\nanswer: ", "2=2 ", "", "j" * 40]  # the last one is longer than the context


def test_greedy_answers_are_the_argmax_continuations_cut_at_the_newline():
    model = char_model()
    expected = [argmax_answer(model, p or "\n", 12) for p in PROMPTS]  # "" prompts with the newline
    examples = [(p, e) for p, e in zip(PROMPTS, expected, strict=True)]
    scores, rows = evaluate_task(model, examples, max_new_tokens=12, num_rows=3)
    assert [r["output"] for r in rows] == expected[:3] and len(rows) == 3
    assert rows[0] == {"prompt": PROMPTS[0], "reference": expected[0], "output": expected[0]}
    assert all("\n" not in r["output"] and len(r["output"]) <= 12 for r in rows)
    assert scores["exact_match"] == 1.0 and scores["chrf"] == 1.0
    assert any(e.strip() for e in expected)  # not a vacuous match of empty answers
    again, rows_again = evaluate_task(model, examples, max_new_tokens=12, num_rows=3)
    assert again == scores and rows_again == rows  # deterministic
    wrong = [(p, e + "zz") for p, e in examples]
    assert evaluate_task(model, wrong, max_new_tokens=12)[0]["exact_match"] == 0.0


def test_sampled_answers_are_reproducible_by_seed_and_lora_models_answer_with_merged_weights():
    model = char_model()
    examples = [(p, "a") for p in PROMPTS[:2]]
    first = evaluate_task(model, examples, 10, greedy=False, seed=5)
    assert first == evaluate_task(model, examples, 10, greedy=False, seed=5)
    adapted = char_model(lora=LoRAConfig(rank=2))  # B = 0: answers exactly as the base model
    assert evaluate_task(adapted, examples, 10) == evaluate_task(model, examples, 10)
    assert lora_layers(adapted.net) and not any(m.merged for m in lora_layers(adapted.net).values())


def test_stop_strings_and_errors():
    assert first_answer("yes<eos>no\nmore", ("\n", "<eos>")) == "yes"
    assert first_answer("no stop here", ("\n",)) == "no stop here"
    with pytest.raises(ConfigError, match="no examples"):
        evaluate_task(char_model(), [], 4)


def test_test_stage_logs_task_scores_writes_the_rows_and_the_protocol(tmp_path):
    """``NextToken(task_max_new_tokens=...)`` on prompt/response data: ``trainer.test`` answers every
    test prompt, logs exact match / chrF / BLEU / ROUGE-L equal to ``evaluate_task``'s numbers on the
    same examples, writes ``predictions/task_test.txt``, and puts the decoding protocol in the test
    JSON; with 0 it generates nothing."""
    import json

    import lightning as L

    from lit_genai.callbacks.evaluation import Evaluation
    from lit_genai.data.prompt_response import PromptResponse

    data = PromptResponse(task="numbers_fr", block_size=96, batch_size=16, val_fraction=0.02)
    data.setup("test")
    torch.manual_seed(0)
    net = GPT(vocab_size=data.vocab_size, block_size=96, n_layer=1, n_head=2, n_embd=16)
    module = NextToken(
        net, vocab_size=data.vocab_size, block_size=96, vocabulary=data.vocabulary, task_max_new_tokens=6
    )
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        callbacks=[Evaluation(at_test=False)],
    )
    trainer.test(module, datamodule=data)
    examples = data.task_examples("test")
    expected, _ = evaluate_task(module, examples, 6, stop=(data.template.stop,))
    for name, value in expected.items():
        assert trainer.callback_metrics[f"test/{name}"].item() == pytest.approx(value)
    listing = (tmp_path / "predictions" / "task_test.txt").read_text()
    assert listing.count("reference: ") == min(8, len(examples))
    payload = json.loads((tmp_path / "test.json").read_text())
    assert payload["task_protocol"] == {
        "split": "test",
        "examples": len(examples),
        "greedy": True,
        "max_new_tokens": 6,
        "stop": data.template.stop,
    }
    module.task_max_new_tokens = 0
    trainer = L.Trainer(default_root_dir=tmp_path / "off", logger=False, enable_progress_bar=False)
    trainer.test(module, datamodule=data)
    assert "test/exact_match" not in trainer.callback_metrics and "test/loss" in trainer.callback_metrics
