"""Turn a task's prompt into the token ids a model sees, the same way in every role.

A prompt is text (one user turn) or a chat: a list of ``{"role", "content"}`` messages. `chat` (the config's
``task.chat_template``) decides whether the tokenizer's chat template is applied:

- ``"auto"`` (or None): when the tokenizer has one;
- True: always (an error when the tokenizer has none);
- False: never; the prompt is plain text (a chat's contents joined by newlines), the system prompt its first line.

The learner (training prompts), evaluation, the supervised warm-up and ``gspo-async preflight`` all encode
through :class:`PromptEncoder` built from the same ``task`` section; actors receive the learner's token ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

Chat = list[dict[str, str]]
PromptText = Union[str, Chat]


def _chat_setting(chat: bool | str | None) -> bool | None:
    if chat is None or chat == "auto":
        return None
    if isinstance(chat, bool):
        return chat
    raise ValueError(f"chat_template={chat!r}: use auto, true or false")


def uses_chat_template(tokenizer: Any, chat: bool | str | None = None) -> bool:
    """Whether prompts go through the chat template: `chat` when True / False, else whether the tokenizer has one."""
    setting = _chat_setting(chat)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if setting is True and not has_template:
        raise ValueError("task.chat_template is true but the tokenizer has no chat_template: set it to auto or "
                         "false, or use a chat model")
    return has_template if setting is None else setting


def check_chat(messages: Any, where: str = "prompt") -> Chat:
    """`messages` as a list of {role, content} string dicts; ValueError naming the bad entry otherwise."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: a chat prompt must be a non-empty list of {{role, content}} messages, "
                         f"got {type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: message {i} must be {{'role': str, 'content': str}}, got {m!r:.80}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def render_prompt(tokenizer: Any, text: PromptText, system: str | None = None,
                  chat: bool | str | None = None) -> str:
    """The prompt string to tokenize.

    With the chat template, text becomes one user turn (a chat is used as is), after a system turn when `system`
    is given and the chat has none, followed by the assistant's generation prompt. Without it, a chat's contents
    are joined by newlines and `system` is the first line.
    """
    messages = check_chat(text) if isinstance(text, list) else None
    if not uses_chat_template(tokenizer, chat):
        body = text if messages is None else "\n".join(m["content"] for m in messages)
        return body if not system else f"{system}\n{body}"
    if messages is None:
        messages = [{"role": "user", "content": text}]
    if system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system}] + messages
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer: Any, text: PromptText, system: str | None = None,
                  chat: bool | str | None = None) -> list[int]:
    """Token ids of the rendered prompt. A chat template writes its own special tokens (BOS included), so the
    tokenizer adds none then; plain text gets the tokenizer's usual special tokens (e.g. a leading BOS)."""
    rendered = render_prompt(tokenizer, text, system=system, chat=chat)
    ids = tokenizer(rendered, add_special_tokens=not uses_chat_template(tokenizer, chat))["input_ids"]
    if not ids:
        raise ValueError(f"prompt {text!r:.80} encodes to no tokens")
    return list(ids)


@dataclass(frozen=True)
class PromptEncoder:
    """Prompt -> token ids with one fixed setting; build it with `from_task_config` so every role agrees.

    chat: 'auto', True or False (``task.chat_template``); system: ``task.system_prompt``.
    """

    tokenizer: Any
    chat: bool | str | None = "auto"
    system: str | None = None

    @classmethod
    def from_task_config(cls, tokenizer: Any, task_cfg: Any) -> PromptEncoder:
        """The encoder a config's ``task`` section describes (chat_template, system_prompt)."""
        encoder = cls(tokenizer, getattr(task_cfg, "chat_template", "auto"), getattr(task_cfg, "system_prompt", None))
        encoder.uses_template  # a template that is required but missing fails here, before any prompt
        return encoder

    @property
    def uses_template(self) -> bool:
        return uses_chat_template(self.tokenizer, self.chat)

    def render(self, prompt: PromptText) -> str:
        """The prompt exactly as the model sees it, as text (template applied, special tokens in it)."""
        return render_prompt(self.tokenizer, prompt, system=self.system, chat=self.chat)

    def __call__(self, prompt: PromptText) -> list[int]:
        return encode_prompt(self.tokenizer, prompt, system=self.system, chat=self.chat)

    def encode_items(self, items: Any) -> Any:
        """(index, token ids, answer, meta) tuples of PromptItems, lazily: the learner's prompt source takes
        these, so text and chat prompts reach it already encoded."""
        for it in items:
            yield (it.index, self(it.prompt), it.answer, it.meta)
