"""Saved conversations: value types, the keeper that answers in them, and export."""
