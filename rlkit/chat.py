"""Conversational prompts, as TRL defines them: a prompt that is a list of ``{role, content}`` messages.

Such a prompt is rendered with the tokenizer's chat template (``model.chat_template`` sets or
overrides it), the generation prompt added, and encoded without special tokens (a template writes
its own begin-of-text token). Reward functions then see what TRL's ``GRPOTrainer`` gives them: the
prompt as its messages, and each completion as ``[{"role": "assistant", "content": text}]``; a
plain-text prompt gets plain-text completions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant", "tool", "developer")


def is_conversational(prompt: Any) -> bool:
    return isinstance(prompt, (list, tuple))


def messages_problem(prompt: Any) -> str | None:
    """What is wrong with a conversational prompt (a short phrase), or None."""
    if not prompt:
        return "the prompt is an empty list of messages"
    for number, message in enumerate(prompt, start=1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            return f"message {number} is not a {{role, content}} mapping"
        if message["role"] not in ROLES:
            return f"message {number} has unknown role {message['role']!r} (roles: {', '.join(ROLES)})"
        if not isinstance(message["content"], str):
            return f"message {number}'s content is {type(message['content']).__name__}, expected text"
    return None


def with_system_prompt(prompt: list[dict[str, Any]], system_prompt: str | None) -> list[dict[str, Any]]:
    """``data.system_prompt`` first, unless the prompt has a system message of its own."""
    if not system_prompt or prompt[0].get("role") == "system":
        return list(prompt)
    return [{"role": "system", "content": system_prompt}, *prompt]


def render_prompt(tokenizer, prompt: Any, system_prompt: str | None = None) -> str:
    """The text the model reads: a plain prompt as it is, messages through the chat template."""
    if not is_conversational(prompt):
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template to render conversational prompts; set "
                         "model.chat_template (a template string or a file)")
    return tokenizer.apply_chat_template(with_system_prompt(prompt, system_prompt), add_generation_prompt=True,
                                         tokenize=False)


def encode_prompt(tokenizer, prompt: Any, system_prompt: str | None = None) -> list[int]:
    """Token ids of a prompt: plain text with the tokenizer's special tokens (BOS for models trained
    with one), a rendered conversation without them (its template wrote them)."""
    if is_conversational(prompt):
        return tokenizer(render_prompt(tokenizer, prompt, system_prompt), add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def as_completion(prompt: Any, text: str) -> Any:
    """A completion as TRL's GRPOTrainer hands it to rewards: messages for a conversational prompt."""
    return [{"role": "assistant", "content": text}] if is_conversational(prompt) else text


def template_text(value: str) -> str:
    """``model.chat_template``: a file holding a Jinja template, or the template itself."""
    if "{" not in value and Path(value).expanduser().is_file():
        return Path(value).expanduser().read_text()
    if "{" not in value:
        from rlkit.config import ConfigError

        raise ConfigError(f"model.chat_template: {value!r} is neither a file nor a Jinja template")
    return value
