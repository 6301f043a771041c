"""The edit ledger: the source of truth for edits; the model and the memory index are rebuilt from it."""

from kbchat.ledger.store import Ledger, NewEdit, Reverted, StoredEdit

__all__ = ["Ledger", "NewEdit", "Reverted", "StoredEdit"]
