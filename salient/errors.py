"""Errors that are the user's to fix: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import reprlib
from typing import Any

QUOTE_LIMIT = 200  # characters of user input an error message quotes (short_repr)


class SalientError(Exception):
    """A bad input (file, parameter, model spec, target): the message is one line naming the problem."""


class ItemError(SalientError):
    """A problem with one item only (unreadable image, NaN scores): a job records it and goes on."""


class _Short(reprlib.Repr):
    """reprlib with small limits: a few levels, a few items per container, short strings."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdeque = 6
        self.maxarray = 6
        self.maxstring = self.maxother = 120
        self.maxlong = 40

    def repr_int(self, x: int, level: int) -> str:
        try:
            return super().repr_int(x, level)
        except ValueError:  # more digits than Python converts (sys.set_int_max_str_digits)
            return f"<int of {x.bit_length()} bits>"


_SHORT = _Short()


def short_repr(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` in at most ``limit`` characters, built without the whole repr: errors quote user
    input through it, and YAML aliases ("billion laughs") give tiny files an exponentially long repr."""
    try:
        s = _SHORT.repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ of the user's object
        s = f"<{type(value).__name__}>"
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 3] + "..."
