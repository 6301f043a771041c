"""One exception family for the app; every boundary (CLI, TUI, HTTP) turns it into one line."""

from __future__ import annotations


class KbchatError(Exception):
    """A user-facing failure. The message says what went wrong and, where possible, how to fix it."""

    exit_code = 1


class ParseError(KbchatError):
    """The /edit text could not be turned into an edit request."""

    exit_code = 2


class EditNotFound(KbchatError):
    exit_code = 3


class EditFailed(KbchatError):
    """An edit was attempted and rolled back; the ledger and the model are as they were."""

    exit_code = 4


class LedgerError(KbchatError):
    exit_code = 5


class ModelLoadError(KbchatError):
    exit_code = 6


class IntegrityError(KbchatError):
    """The running weights do not match what the ledger says they should be."""

    exit_code = 7


class UnsupportedOperation(KbchatError):
    exit_code = 8
