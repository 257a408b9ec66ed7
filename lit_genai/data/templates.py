"""Prompt templates: how a conversation (role, content turns) becomes one text for a next-token model.

Supervised fine-tuning on prompt/response data (Ouyang et al. 2022, InstructGPT; Taori et al. 2023,
Stanford Alpaca; OpenAI's ChatML) trains a causal model on the rendered text and counts the loss on
the assistant's tokens only. A ``Template`` is a few plain strings, so a YAML file can give one:

- ``prefix``: text before the first turn (Alpaca's preamble);
- ``roles``: role -> its turn, a string with one ``{content}`` placeholder
  (``"### Input:\\n{content}\\n\\n"``).
  ``assistant`` is required: the text before its ``{content}`` ends every prompt (the model is asked
  to go on from there), the text after it (``end``) closes every response and is trained on, so
  the model learns to stop; ``stop`` is where generation should be cut.

Named templates (``TEMPLATES``): ``plain`` (each turn on its own line), ``alpaca`` (Taori et al. 2023,
``### Instruction:`` / ``### Input:`` / ``### Response:`` headers after the no-input preamble),
``chatml`` (``<|im_start|>role\\n...<|im_end|>\\n``).

``render(template, messages)`` gives the text as ``Segment`` pieces (text, trained-on or not), so a
data module can encode each piece and mask the prompt; ``render_prompt`` gives a prompt up to the
point where the assistant answers. Pure functions of strings: no tokenizer, no torch.

Shape legend: none (strings only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Union

from lit_genai.errors import ConfigError

PLACEHOLDER = "{content}"
Message = Mapping[str, str]  # {"role": ..., "content": ...}


@dataclass(frozen=True)
class Template:
    """A prompt template (module docstring).

    Args:
        name: What it is called in messages (``alpaca``, or ``custom`` for a YAML one).
        roles: Role -> its turn with one ``{content}``; must hold ``assistant``.
        prefix: Text before the first turn.
    """

    name: str
    roles: Mapping[str, str] = field(default_factory=dict)
    prefix: str = ""

    def __post_init__(self) -> None:
        if "assistant" not in self.roles:
            raise ConfigError(
                f"template {self.name!r} has no 'assistant' turn: add roles.assistant, e.g. '{{content}}\\n'"
            )
        for role, turn in self.roles.items():
            if not isinstance(turn, str) or turn.count(PLACEHOLDER) != 1:
                raise ConfigError(
                    f"template {self.name!r}: the {role!r} turn must be a string with exactly one "
                    f"{PLACEHOLDER} placeholder, got {turn!r}"
                )

    @property
    def start(self) -> str:
        """What every prompt ends with: the assistant turn up to its content."""
        return self.roles["assistant"].split(PLACEHOLDER)[0]

    @property
    def end(self) -> str:
        """What closes every response (trained on, so the model learns to stop)."""
        return self.roles["assistant"].split(PLACEHOLDER)[1]

    @property
    def stop(self) -> str:
        """Where generation is cut: ``end`` without surrounding whitespace, or ``end`` itself when it
        is only whitespace (a newline for ``plain``)."""
        return self.end.strip() or self.end

    def turn(self, role: str, content: str) -> str:
        """One turn's text; one ``ConfigError`` line for a role the template does not know. An
        Alpaca ``input`` is a second user turn where the template has no ``input`` role."""
        if role == "input" and role not in self.roles:
            role = "user"
        if role not in self.roles:
            raise ConfigError(
                f"template {self.name!r} does not know the role {role!r} (it knows "
                f"{', '.join(sorted(self.roles))}): add it to the template's roles or rename the role"
            )
        return self.roles[role].replace(PLACEHOLDER, content)


TEMPLATES: dict[str, Template] = {
    "plain": Template(
        "plain",
        {"system": "{content}\n", "user": "{content}\n", "input": "{content}\n", "assistant": "{content}\n"},
    ),
    # Taori et al. 2023 (tatsu-lab/stanford_alpaca, train.py PROMPT_DICT "prompt_no_input"); the
    # response ends with a blank line instead of the tokenizer's EOS (char and byte tokenizers have none).
    "alpaca": Template(
        "alpaca",
        {
            "system": "{content}\n\n",
            "user": "### Instruction:\n{content}\n\n",
            "input": "### Input:\n{content}\n\n",
            "assistant": "### Response:\n{content}\n\n",
        },
        prefix=(
            "Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.\n\n"
        ),
    ),
    "chatml": Template(
        "chatml",
        {role: f"<|im_start|>{role}\n{{content}}<|im_end|>\n" for role in ("system", "user", "assistant")},
    ),
}

TemplateSpec = Union[str, Mapping[str, object], Template]


def get_template(spec: TemplateSpec) -> Template:
    """A template by name (``TEMPLATES``), from a YAML mapping ``{prefix: ..., roles: {role: turn}}``
    (or the roles directly: ``{user: ..., assistant: ...}``), or as it is."""
    if isinstance(spec, Template):
        return spec
    if isinstance(spec, str):
        if spec not in TEMPLATES:
            raise ConfigError(
                f"data.init_args.template={spec!r} is not a template: use one of {', '.join(TEMPLATES)} "
                "or give a mapping {prefix: ..., roles: {user: '...{content}...', assistant: '...'}}"
            )
        return TEMPLATES[spec]
    spec = dict(spec)
    prefix = spec.pop("prefix", "")
    roles = spec.pop("roles", None)
    if roles is None:  # the roles given directly
        roles, spec = spec, {}
    if spec:
        raise ConfigError(f"data.init_args.template: unknown keys {sorted(spec)}; use prefix and roles")
    return Template("custom", {str(k): v for k, v in dict(roles).items()}, str(prefix))


class Segment(NamedTuple):
    """A piece of a rendered conversation: its text and whether the loss counts it (an assistant
    turn's content and end)."""

    text: str
    trained: bool


def render(template: Template, messages: Sequence[Message]) -> list[Segment]:
    """A conversation -> its text as segments; their texts joined are the whole text.

    Every assistant turn is split into its start (prompt-side, not trained) and its content plus
    ``end`` (trained); every other turn and the prefix are not trained.
    """
    out = [Segment(template.prefix, False)] if template.prefix else []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "assistant":
            out += [Segment(template.start, False), Segment(content + template.end, True)]
        else:
            out.append(Segment(template.turn(role, content), False))
    return [s for s in out if s.text]


def render_prompt(template: Template, prompt: Union[str, Sequence[Message]]) -> str:
    """A prompt ready to be answered: a user text (or the turns before the answer) rendered and
    followed by the assistant's start. ``render_prompt(t, m) + response + t.end`` is the text the
    model is trained on for ``m + [assistant: response]``."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    text = "".join(s.text for s in render(template, messages))
    return text + template.start
