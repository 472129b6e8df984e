"""Argument checks shared by the package's constructors: one helper per kind of check.

Each raises ``ValueError("`name` must be <what is expected>, got <value!r>.")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

_Choice = TypeVar("_Choice")


def checked_int(name: str, value: object, minimum: int, *, none: bool = False, what: str = "") -> int | None:
    """``value`` if it is an int (a bool is not) of at least ``minimum``, or None where ``none`` allows it.

    Raises:
        ValueError: naming ``name`` (``what`` replaces the default description of the expected value).
    """
    if value is None and none:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return value
    expected = what or ("a positive int" if minimum == 1 else f"an int >= {minimum}") + (" or None" if none else "")
    raise ValueError(f"`{name}` must be {expected}, got {value!r}.")


def checked_bool(name: str, value: object) -> bool:
    """``value`` if it is a bool (True or False; not 0, 1 or None).

    Raises:
        ValueError: ``"`name` must be a bool, got <value!r>."``.
    """
    if isinstance(value, bool):
        return value
    raise ValueError(f"`{name}` must be a bool, got {value!r}.")


def checked_choice(name: str, value: object, choices: Sequence[_Choice], *, what: str = "") -> _Choice:
    """The one of ``choices`` that ``value`` equals (a bool equals no int, and an int no bool).

    Raises:
        ValueError: ``"`name` must be one of <choices>, got <value!r>."`` (``what`` replaces ``one of
            <choices>``).
    """
    for choice in choices:
        if isinstance(value, bool) == isinstance(choice, bool) and value == choice:
            return choice
    raise ValueError(f"`{name}` must be {what or f'one of {choices}'}, got {value!r}.")
