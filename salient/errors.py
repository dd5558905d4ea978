"""Errors that are the user's to fix: the CLI prints them as one line and exits with code 2."""


class SalientError(Exception):
    """A bad input (file, parameter, model spec, target): the message is one line naming the problem."""


class ItemError(SalientError):
    """A problem with one item only (unreadable image, NaN scores): a job records it and goes on."""
