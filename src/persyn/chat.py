"""Prompt formatting shared by teacher generation and learnability scoring.

Instruct models get their own chat template (or a Jinja override); base models get a few-shot template, since
they were never taught a chat format and answer a bare question poorly.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from persyn.errors import ConfigError

FEW_SHOT_EXAMPLES: list[tuple[str, str]] = [
    (
        "Tom has 3 boxes with 4 apples in each box. He eats 2 apples. How many apples are left?",
        "Tom starts with 3 * 4 = 12 apples. After eating 2 he has 12 - 2 = 10 apples.\n#### 10",
    ),
    (
        "Write one sentence describing the sea.",
        "The sea stretches to the horizon, grey-blue and restless under the wind.",
    ),
    (
        "A shirt costs $20 and is discounted by 25%. What is the new price?",
        "The discount is 20 * 0.25 = 5 dollars, so the new price is 20 - 5 = 15 dollars.\n#### 15",
    ),
]

FEW_SHOT_STOP = "\n\nQuestion:"


def few_shot_prefix() -> str:
    return "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in FEW_SHOT_EXAMPLES)


def uses_few_shot(tokenizer: Any, few_shot: bool | None, chat_template: str | None = None) -> bool:
    if few_shot is not None:
        return few_shot
    if chat_template == "few-shot":
        return True
    return chat_template is None and not getattr(tokenizer, "chat_template", None)


def format_prompt(tokenizer: Any, prompt: str, *, chat_template: str | None = None,
                  few_shot: bool | None = None) -> str:
    """The text the model sees before its response (generation prompt included)."""
    if uses_few_shot(tokenizer, few_shot, chat_template):
        return f"{few_shot_prefix()}Question: {prompt}\nAnswer:"
    template = None if chat_template in (None, "few-shot") else chat_template
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True,
        chat_template=template,
    )


def format_response(prompt_text: str, response: str, *, few_shot: bool) -> str:
    """How the response continues the formatted prompt (a leading space after 'Answer:')."""
    return f" {response.lstrip()}" if few_shot else response


def template_text(value: str | None, *, key: str) -> str | None:
    """A Jinja template given inline or as a path to a .jinja file; "few-shot" passes through."""
    if value is None or value == "few-shot" or "{" in value:
        return value
    path = Path(value).expanduser()
    if path.suffix == ".jinja" or path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read chat template file: {exc.strerror}", key=key) from None
    return value


@lru_cache(maxsize=16)
def _compiled(template: str) -> Any:
    import json
    from datetime import datetime

    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    # As transformers renders chat templates (trim_blocks, lstrip_blocks, these globals), without a tokenizer.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env.from_string(template)


def render_template(template: str, prompt: str, *, key: str) -> str:
    """A one-turn chat prompt rendered with a Jinja chat template, generation prompt included.

    `bos_token` renders empty: a server tokenising the text for /v1/completions adds the BOS itself where its
    tokenizer has one, as it would have after rendering the template on its chat endpoint."""
    try:
        return _compiled(template).render(messages=[{"role": "user", "content": prompt}],
                                          add_generation_prompt=True, bos_token="", eos_token="")
    except Exception as exc:  # noqa: BLE001 - any template error is the template's: one line naming the key
        raise ConfigError(f"the chat template does not render: {type(exc).__name__}: {exc}", key=key) from None
