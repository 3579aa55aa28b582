"""One exception family for everything a user can get wrong.

The command line catches :class:`ResnextError` and prints its message on one line; any
other exception is a bug and keeps its traceback. Each subclass is also a ``ValueError``
(what code written against earlier versions caught).
"""

from __future__ import annotations


class ResnextError(Exception):
    """Something the user asked for cannot be done; the message says what and how to fix it."""

    exit_code = 2  # the status ``resnext`` exits with


class ConfigError(ResnextError, ValueError):
    """A config file, override or command-line option that cannot be used."""


class DataError(ResnextError, ValueError):
    """A dataset that cannot be read as configured (missing path, bad file, empty split)."""


class WeightsError(ResnextError, ValueError):
    """A weights, checkpoint or exported file that cannot be used."""


class TrainingError(ResnextError):
    """Training stopped on a condition of the run itself (e.g. a NaN loss)."""

    exit_code = 1


class AccuracyError(ResnextError):
    """A result that misses an accuracy bound the user set (e.g. ``resnext quantize``'s
    ``--max-drop``); nothing was written."""

    exit_code = 1
