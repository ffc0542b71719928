"""Built-in reward functions (installed as ``rlkit.rewards``), with TRL's signature."""

from rlkit.rewards import exact_match  # noqa: F401
