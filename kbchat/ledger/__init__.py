"""The edit ledger: the source of truth for edits; the model and the memory index are rebuilt from it."""

from kbchat.ledger.models import KINDS, STATUSES
from kbchat.ledger.store import Ledger, NewEdit, StoredEdit

__all__ = ["KINDS", "STATUSES", "Ledger", "NewEdit", "StoredEdit"]
