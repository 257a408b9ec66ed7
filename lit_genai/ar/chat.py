"""Asking a fine-tuned next-token model as it was trained: prompts rendered with its template,
conversations, and the response cut out of a decoded sample.

A model fine-tuned on prompt/response data (``data.prompt_response``) keeps the data's template
(``NextToken.prompt_template``; ``data.templates``). Its sampling settings give either a ``prompt``
(one user turn) or a ``conversation`` (the turns so far: a JSON file, or the list of
``{"role", "content"}`` turns itself); ``prompt_text`` renders either up to where the assistant's
answer starts. A sample is that prompt followed by new tokens; ``response`` takes the new text up to
the template's ``stop`` (the newline of ``plain``, the blank line of ``alpaca``, ``<|im_end|>`` of
``chatml``), which is what ``predict`` writes, ``lit_genai.generate`` returns and the service sends.

Pure functions of strings and settings (no torch), so the CLI, the API and the service share them.

Shape legend: none (strings only).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

from lit_genai.data.templates import Message, Template, render_prompt
from lit_genai.errors import ConfigError

Conversation = Union[str, Sequence[Message]]  # a JSON file, or the turns themselves
_KEY = "model.sampling.conversation"


def read_conversation(conversation: Conversation) -> list[Message]:
    """The turns of a conversation: a JSON file holding ``{"messages": [...]}`` or the list of turns
    (a ``.jsonl`` file: its one line), or the turns as they are; each turn a ``{"role": str,
    "content": str}`` object. Every problem is one ``ConfigError`` line."""
    if isinstance(conversation, str):
        path = Path(conversation).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"{_KEY}={conversation!r}: no such file (a JSON file of "
                '{"messages": [{"role": "user", "content": ...}, ...]})'
            )
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        text = lines[0] if path.suffix == ".jsonl" and len(lines) == 1 else "\n".join(lines)
        try:
            turns: Any = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"{_KEY}: {path.name} is not one JSON value ({err.msg}, line {err.lineno})"
            ) from None
        where = path.name
    else:
        turns, where = conversation, _KEY
    if isinstance(turns, dict):
        turns = turns.get("messages")
    if not isinstance(turns, list) or not turns:
        raise ConfigError(f"{where}: give a non-empty list of turns, or an object with a 'messages' list")
    for i, turn in enumerate(turns):
        if not (
            isinstance(turn, dict)
            and isinstance(turn.get("role"), str)
            and isinstance(turn.get("content"), str)
        ):
            raise ConfigError(
                f"{where}: turn {i} needs string 'role' and 'content' fields, got {turn!r}"[:300]
            )
    if turns[-1]["role"] == "assistant":
        raise ConfigError(f"{where}: the last turn is the assistant's: end with the turn to be answered")
    return [{"role": t["role"], "content": t["content"]} for t in turns]


def prompt_text(template: Optional[Template], prompt: Any, conversation: Optional[Conversation]) -> Any:
    """What a model with ``template`` continues: the conversation (which replaces any ``prompt``, so
    ``--model.sampling.conversation`` overrides a YAML's prompt), or a text prompt, rendered up to
    the assistant's answer; without a template (or for token ids) the prompt as it is."""
    if conversation is not None:
        if template is None:
            raise ConfigError(
                f"{_KEY} needs a model fine-tuned on prompt/response data (model.prompt_template, "
                "linked from data.PromptResponse): this model has no template"
            )
        return render_prompt(template, read_conversation(conversation))
    if template is not None and isinstance(prompt, str):
        return render_prompt(template, prompt)
    return prompt


def response(text: str, prompt: str, stop: str) -> tuple[str, bool]:
    """(the response in a decoded sample ``text`` that began with the rendered ``prompt``: the new
    text up to, not including, the first ``stop``; whether that stop was reached)."""
    new = text[len(prompt) :] if text.startswith(prompt) else text
    cut = new.find(stop) if stop else -1
    return (new, False) if cut < 0 else (new[:cut], True)
