"""Built-in environments (installed as ``rlkit.envs``); they register like third-party ones."""

from rlkit.envs import arith  # noqa: F401
