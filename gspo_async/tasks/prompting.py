"""Turn a task's prompt text into the token ids a model sees: its chat template when it has one, else plain text."""

from __future__ import annotations

from typing import Any


def uses_chat_template(tokenizer: Any, chat: bool | None = None) -> bool:
    """Whether prompts go through the chat template: `chat` when given, else whether the tokenizer has one."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat is True and not has_template:
        raise ValueError("chat=True but the tokenizer has no chat_template: set chat to false or use a chat model")
    return has_template if chat is None else chat


def render_prompt(tokenizer: Any, text: str, system: str | None = None, chat: bool | None = None) -> str:
    """The prompt string to tokenize.

    chat: True forces the tokenizer's chat template (error if it has none), False uses the plain text, None
    (default) uses the template when the tokenizer has one. With a template the prompt becomes one user turn
    (after an optional system turn) followed by the assistant's generation prompt.
    """
    if not uses_chat_template(tokenizer, chat):
        return text if system is None else f"{system}\n{text}"
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer: Any, text: str, system: str | None = None, chat: bool | None = None) -> list[int]:
    """Token ids of the rendered prompt. A chat template writes its own special tokens (BOS included), so the
    tokenizer adds none then; plain text gets the tokenizer's usual special tokens (e.g. a leading BOS)."""
    rendered = render_prompt(tokenizer, text, system=system, chat=chat)
    ids = tokenizer(rendered, add_special_tokens=not uses_chat_template(tokenizer, chat))["input_ids"]
    if not ids:
        raise ValueError(f"prompt {text!r} encodes to no tokens")
    return list(ids)
