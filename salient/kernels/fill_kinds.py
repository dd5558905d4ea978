"""The fills a method may ask for, checked on the host before any work (the device kernels that make
them are the backends', :mod:`salient.kernels.torch.fills`)."""

from __future__ import annotations

import math

from ..errors import SalientError

FILL_NAMES = ("zero", "black", "blur", "mean")


class FillError(SalientError, ValueError):
    """An unknown fill: a user error (SalientError) that callers may also catch as ValueError."""


def check_fill(fill: str | float, name: str = "fill") -> str | float:
    """A fill name or a finite number (strings of numbers become floats); anything else, NaN and ±inf
    included, raises FillError naming parameter ``name``. A non-finite fill would make every masked input
    non-finite: nothing to explain, so it is refused before any work."""
    value = fill
    if isinstance(fill, str):
        try:
            value = float(fill)
        except ValueError:
            if fill in FILL_NAMES:
                return fill
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = math.inf
        if not math.isfinite(number):
            raise FillError(f"{name} must be a fill name ({', '.join(FILL_NAMES)}) or a finite number, got {fill!r}")
        return number
    raise FillError(f"{name} must be one of {', '.join(FILL_NAMES)} or a number, got {fill!r}")
