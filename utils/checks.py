"""Argument checks shared by the modules, data modules and callbacks, so each rule and its message is written once.

Settings are checked where they are given (a constructor, a dataclass's ``__post_init__``) so that a bad value
fails at once with the setting's name, not deep inside a DataLoader worker or after the first epoch. Every
check raises `ValueError` naming the setting and the value, and returns the value so it can be used inline.
"""

from __future__ import annotations

import math

import numpy as np


def check_int(name: str, value: object, *, minimum: int | None = None, allow_numpy: bool = False) -> int:
    """Checks that ``value`` is an integer (not a bool), at least ``minimum`` when given.

    Args:
        name: How the message names the setting (e.g. ``"stitch_stride"``, ``"GradCAMCallback num_tiles"``).
        value: The value to check.
        minimum: The smallest value allowed; None: any integer.
        allow_numpy: Also accept numpy integer scalars (``np.int64`` from an array).

    Returns:
        ``value`` as a Python int.

    Raises:
        ValueError: ``value`` is a bool, not an integer, or below ``minimum``.
    """
    types = (int, np.integer) if allow_numpy else (int,)
    if isinstance(value, bool) or not isinstance(value, types) or (minimum is not None and value < minimum):
        need = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise ValueError(f"{name}={value!r}: must be {need}")
    return int(value)


def check_range(
    name: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Checks that the number ``value`` lies between ``low`` and ``high`` (NaN never does).

    Args:
        name: How the message names the setting.
        value: The number to check.
        low: The lower bound; None: no lower bound.
        high: The upper bound; None: no upper bound.
        low_open: Exclude ``low`` itself.
        high_open: Exclude ``high`` itself.

    Returns:
        ``value``, unchanged.

    Raises:
        ValueError: ``value`` is NaN or outside the interval.
    """
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high or value != value:  # value != value catches NaN
        raise ValueError(f"{name} must be {_interval(low, high, low_open, high_open)}, got {value}")
    return value


def check_non_negative(name: str, value: float) -> float:
    """Checks that ``value`` is a number >= 0 (a weight, a decay, a count of epochs); returns it.

    Raises:
        ValueError: ``value`` is negative or NaN.
    """
    return check_range(name, value, 0.0)


def check_threshold(name: str, value: float) -> float:
    """Checks that ``value`` is a probability strictly inside (0, 1), as a decision threshold must be; returns it.

    Raises:
        ValueError: ``value`` is <= 0, >= 1 or NaN.
    """
    return check_range(name, value, 0.0, 1.0, low_open=True, high_open=True)


def check_filename_part(name: str, what: str = "name") -> str:
    """Checks that ``name`` can be used as part of a single file name (no folders, not empty); returns it.

    Raises:
        ValueError: ``name`` is not a str, is empty, ``.``/``..``, or contains a path separator or NUL.
    """
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in ("/", "\\", "\0")):
        raise ValueError(f"{what} {name!r} cannot be used in a file name (empty, '.', '..', or has '/', '\\', NUL)")
    return name


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """``"in (0, 1)"``, ``">= 0"``, ``"< 1"`` ...: the allowed values, as messages write them."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_number(low)}, {_number(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_number(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_number(high)}"
    return "a number"


def _number(bound: float) -> str:
    """A bound as messages write it: ``0`` and ``1`` rather than ``0.0`` and ``1.0``."""
    return str(int(bound)) if float(bound).is_integer() and not math.isinf(bound) else str(bound)
