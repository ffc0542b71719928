"""Built-in environments (installed as ``rlkit.envs``); they register like third-party ones."""

from rlkit.envs import arith  # noqa: F401
from rlkit.envs import arith_retry  # noqa: F401
from rlkit.envs import math  # noqa: F401
from rlkit.envs import code  # noqa: F401
