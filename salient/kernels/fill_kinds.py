"""The fills a method may ask for, checked on the host before any work (the device kernels that make
them are the backends', :mod:`salient.kernels.torch.fills`)."""

from __future__ import annotations

from ..errors import SalientError

FILL_NAMES = ("zero", "black", "blur", "mean")


class FillError(SalientError, ValueError):
    """An unknown fill: a user error (SalientError) that callers may also catch as ValueError."""


def check_fill(fill: str | float) -> str | float:
    """A fill name or a number (strings of numbers become floats); anything else raises FillError."""
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        return float(fill)
    if isinstance(fill, str):
        try:
            return float(fill)
        except ValueError:
            pass
        if fill in FILL_NAMES:
            return fill
    raise FillError(f"fill must be one of {', '.join(FILL_NAMES)} or a number, got {fill!r}")
