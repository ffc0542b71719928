"""Built-in reward functions (installed as ``rlkit.rewards``), with TRL's signature."""

from typing import Any


def completion_text(completion: Any) -> str:
    """A completion as text; a conversational one (a list of messages) gives its last message's content."""
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


# imported after completion_text, which they use
from rlkit.rewards import exact_match, format, length, math  # noqa: E402,F401
from rlkit.rewards import code_exec, majority_vote  # noqa: E402,F401
