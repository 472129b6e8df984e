"""Argument checks shared by the package's constructors: one helper per kind of check."""

from __future__ import annotations


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
