"""Registries for rewards, environments, objectives, advantage estimators, policy losses and
generation engines.

Built-ins register exactly like third-party plugins do: with a decorator
(``@rlkit.reward("name")``), through an entry-point group (``rlkit.rewards``, ``rlkit.envs``,
``rlkit.objectives``, ``rlkit.advantage_estimators``, ``rlkit.policy_losses``, ``rlkit.engines``)
of an installed package, or by a reference
``path/to/file.py:name`` / ``package.module:name`` given where a name is expected.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class PluginNotFoundError(KeyError):
    """Raised when a name is neither registered nor a loadable reference."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0])


@dataclass(frozen=True)
class PluginEntry(Generic[T]):
    name: str
    obj: T
    origin: str  # "built-in", "entry point <dist>", "file <path>", "module <mod>", "decorator <mod>"


class Registry(Generic[T]):
    """A name -> object table for one kind of plugin."""

    def __init__(self, kind: str, entry_point_group: str, builtin_modules: tuple[str, ...]):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._builtin_modules = builtin_modules
        self._entries: dict[str, PluginEntry[T]] = {}
        self._discovered = False

    def register(self, name: str, obj: T | None = None, *, origin: str | None = None):
        """Register ``obj`` under ``name``; used bare it is a decorator."""

        def add(target: T) -> T:
            where = origin or _origin_of(target)
            existing = self._entries.get(name)
            if existing is not None and existing.obj is not target:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered ({existing.origin}); "
                    f"pick another name for the one from {where}"
                )
            self._entries[name] = PluginEntry(name, target, where)
            return target

        return add if obj is None else add(obj)

    def get(self, ref: str) -> T:
        """Look up ``ref``: a registered name, ``file.py:attr`` or ``module:attr``."""
        self._discover()
        if ref in self._entries:
            return self._entries[ref].obj
        if ":" in ref:
            return self._load_reference(ref)
        raise PluginNotFoundError(self._not_found_message(ref))

    def entries(self) -> list[PluginEntry[T]]:
        self._discover()
        return sorted(self._entries.values(), key=lambda e: e.name)

    def names(self) -> list[str]:
        return [e.name for e in self.entries()]

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for module in self._builtin_modules:
            importlib.import_module(module)
        for ep in importlib.metadata.entry_points(group=self.entry_point_group):
            if ep.name in self._entries:
                continue
            dist = ep.dist.name if ep.dist is not None else "?"
            try:
                self.register(ep.name, ep.load(), origin=f"entry point of {dist}")
            except Exception as exc:  # a broken third-party plugin must not break the others
                print(f"warning: {self.kind} plugin {ep.name!r} from {dist} failed to load: {exc}",
                      file=sys.stderr)

    def _load_reference(self, ref: str) -> T:
        location, _, attr = ref.rpartition(":")
        if location.endswith(".py") or "/" in location:
            path = Path(location).expanduser()
            if not path.is_file():
                raise PluginNotFoundError(f"{self.kind} reference {ref!r}: no such file {path}")
            module = _import_file(path)
            origin = f"file {path}"
        else:
            try:
                module = importlib.import_module(location)
            except ImportError as exc:
                raise PluginNotFoundError(
                    f"{self.kind} reference {ref!r}: {exc} (a module must be importable: installed, or its "
                    f"folder on PYTHONPATH; name a loose file as path/to/file.py:{attr})") from exc
            origin = f"module {location}"
        if not hasattr(module, attr):
            close = difflib.get_close_matches(attr, [a for a in dir(module) if not a.startswith("_")])
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise PluginNotFoundError(f"{self.kind} reference {ref!r}: {origin} has no {attr!r}{hint}")
        obj = getattr(module, attr)
        self._entries.setdefault(ref, PluginEntry(ref, obj, origin))
        return obj

    def _not_found_message(self, ref: str) -> str:
        close = difflib.get_close_matches(ref, list(self._entries), n=3, cutoff=0.5)
        msg = f"unknown {self.kind} {ref!r}"
        if close:
            msg += f"; did you mean {' or '.join(repr(c) for c in close)}?"
        known = ", ".join(sorted(self._entries)) or "none"
        return msg + f" (known: {known}; or give path/to/file.py:name or module:name)"


def _origin_of(obj: Any) -> str:
    module = getattr(obj, "__module__", "") or ""
    if module.startswith("rlkit."):
        return "built-in"
    return f"decorator in {module or '?'}"


def _import_file(path: Path):
    name = f"rlkit_user_plugin_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginNotFoundError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


objectives: Registry[Any] = Registry("objective", "rlkit.objectives", ("rlkit.objectives",))
rewards: Registry[Callable[..., list]] = Registry("reward", "rlkit.rewards", ("rlkit.rewards",))
envs: Registry[Any] = Registry("environment", "rlkit.envs", ("rlkit.envs",))
engines: Registry[Any] = Registry("engine", "rlkit.engines", ("rlkit.rollout.engines",))
# an objective is a named pairing of one of each (with its defaults): see rlkit/objectives/estimators.py
advantage_estimators: Registry[Any] = Registry("advantage estimator", "rlkit.advantage_estimators",
                                               ("rlkit.objectives",))
policy_losses: Registry[Any] = Registry("policy loss", "rlkit.policy_losses", ("rlkit.objectives",))
# offline preference losses over (chosen, rejected) pairs: see rlkit/preference/losses.py
preference_losses: Registry[Any] = Registry("preference loss", "rlkit.preference_losses", ("rlkit.preference",))


def objective(name: str):
    """Decorator registering an objective class under ``name``."""
    return objectives.register(name)


def advantage_estimator(name: str, *, turn_level: bool = False, needs_entropy: bool = False):
    """Decorator registering an advantage estimator under ``name``.

    ``fn(rewards, config)`` maps ``[num_groups, G]`` rewards to advantages of the same shape; with
    ``turn_level=True``, ``fn(turn_rewards, reached, config)`` maps ``[num_groups, G, T]`` per-turn
    rewards to per-turn advantages. ``config`` is the objective's config: an estimator reads the
    knobs it knows (``scale_rewards``...) and takes its own default where the objective has none.
    With ``needs_entropy=True`` it is called as ``fn(rewards, config, mean_entropy=...)``, with each
    completion's mean token entropy ``[num_groups, G]`` (of the distributions it was sampled from).
    """

    def add(fn):
        fn.turn_level = turn_level
        fn.needs_entropy = needs_entropy
        return advantage_estimators.register(name)(fn)

    return add


def policy_loss(name: str):
    """Decorator registering a per-token policy loss (or loss term) under ``name``: ``fn(...)``
    returns the per-token loss ``[B, T]``, or ``(loss, parts)`` with per-token diagnostics.
    Objectives compose these with an aggregation."""
    return policy_losses.register(name)


def preference_loss(name: str):
    """Decorator registering an offline preference loss class (config dataclass ``config_class``,
    ``loss(pairs) -> (per-pair loss, metrics)``) under ``name``."""
    return preference_losses.register(name)


def reward(name: str):
    """Decorator registering a reward function (TRL signature) under ``name``."""
    return rewards.register(name)


def env(name: str):
    """Decorator registering an environment class under ``name``."""
    return envs.register(name)


def engine(name: str):
    """Decorator registering a generation engine class (``from_config(config, device)``) under ``name``."""
    return engines.register(name)
