"""The one check of a config value against its dataclass field's annotation.

Used by :mod:`rlkit.config` (the run's keys) and :mod:`rlkit.objectives.base` (an objective's own
keys), so that ``0.3``, ``"3e-4"`` or ``[a, b]`` mean the same wherever they are written.
Conversions are the ones that lose nothing: an int is a fine float, ``2.0`` a fine int, a YAML
bool a fine word for a ``str`` key (but a number is not), ``"a, b"`` a fine list from the command line. ``True`` is
never a number.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any


class BadValue(ValueError):
    """A value that does not fit its field's type; the message names the field."""


_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def float_from_text(value: Any) -> float | None:
    """``"3e-4"`` -> 3e-4. YAML 1.1 (PyYAML) reads exponents without a dot as strings; a float
    field takes them, but nothing else that merely looks numeric ("nan", "1,5")."""
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)
    return None


def check_value(value: Any, tp: Any, where: str) -> Any:
    """``value`` as field type ``tp`` wants it, or :class:`BadValue` naming ``where``."""
    origin = typing.get_origin(tp)
    bad = BadValue(f"{where}: expected {type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in (o for o in options if o is not type(None)):
            try:
                return check_value(value, option, where)
            except BadValue:
                continue
        raise bad
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise bad
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad
        (item_type,) = typing.get_args(tp)
        return [check_value(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        number = float_from_text(value)
        if number is not None:
            return number
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML reads a bare true/false as a bool: keys like use_gpu take words
            return "true" if value else "false"
        raise bad
    if tp is Any or not isinstance(tp, type):
        return value
    if isinstance(value, tp):
        return value
    raise bad


def type_name(tp: Any) -> str:
    """``float | None``, ``list[str]``, ``int``: how docs and errors write a field's type."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(type_name(option) for option in typing.get_args(tp))
    if tp is type(None):
        return "None"
    if typing.get_origin(tp) is None:
        return getattr(tp, "__name__", str(tp))
    return str(tp).replace("typing.", "")
