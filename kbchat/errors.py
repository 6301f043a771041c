"""One exception family for the app; every boundary (CLI, TUI, HTTP) turns it into one line.

Each class carries its wire `code` (what the server puts in an error body and the remote client maps
back to the same class), its HTTP status and the CLI's exit code.
"""

from __future__ import annotations


class KbchatError(Exception):
    """A user-facing failure. The message says what went wrong and, where possible, how to fix it."""

    code = "kbchat_error"
    http_status = 400
    exit_code = 1


class ParseError(KbchatError):
    """The /edit text could not be turned into an edit request."""

    code = "parse_error"
    http_status = 422
    exit_code = 2


class EditNotFound(KbchatError):
    code = "edit_not_found"
    http_status = 404
    exit_code = 3


class ChatNotFound(KbchatError):
    """No saved conversation (or message) has that id."""

    code = "chat_not_found"
    http_status = 404
    exit_code = 3


class EditFailed(KbchatError):
    """An edit was attempted and rolled back; the ledger and the model are as they were."""

    code = "edit_failed"
    exit_code = 4


class LedgerError(KbchatError):
    code = "ledger_error"
    exit_code = 5


class ModelLoadError(KbchatError):
    code = "model_load_error"
    exit_code = 6


class IntegrityError(KbchatError):
    """The running weights do not match what the ledger says they should be."""

    code = "integrity_error"
    exit_code = 7


class UnsupportedOperation(KbchatError):
    """This implementation of the service cannot do that (see its `capabilities()`)."""

    code = "unsupported_operation"
    http_status = 409
    exit_code = 8


def error_class(code: str | None) -> type[KbchatError]:
    """The KbchatError subclass whose `code` is `code` (KbchatError itself when unknown)."""
    pending: list[type[KbchatError]] = [KbchatError]
    while pending:
        cls = pending.pop()
        if cls.code == code:
            return cls
        pending.extend(cls.__subclasses__())
    return KbchatError
