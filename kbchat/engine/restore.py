"""Opening the engine: the weights and the memory rebuilt from the ledger, problems reported."""

from __future__ import annotations

from collections.abc import Sequence

from kbchat.engine.deltas import row_delta
from kbchat.ledger import Ledger, StoredEdit
from kbchat.memory.book import MemoryBook
from kbchat.records import Progress, ProgressFn, no_progress
from kbchat.runtime import ModelRuntime


def restore(runtime: ModelRuntime, book: MemoryBook, progress: ProgressFn) -> list[str]:
    """Replay the active weight deltas (checking the weights against the ledger's fingerprint) and
    index the active memory edits with their in-model patches. Returns the problems found: a delta that
    is missing or altered is not applied, and said so."""
    problems = replay_weights(runtime, book.ledger, progress, only_if_any=True)
    memory = book.load()
    if memory:
        progress(Progress("memory", 0, len(memory), f"indexing {len(memory)} memory edit(s)"))
    problems += add_patches(runtime, memory)
    return list(dict.fromkeys(problems))


def replay_weights(runtime: ModelRuntime, ledger: Ledger, progress: ProgressFn = no_progress, *,
                   only_if_any: bool = False) -> list[str]:
    """Weights := base + the ledger's active weight deltas, checked against the ledger's fingerprint
    (recorded when it has none). With `only_if_any`, nothing is done when there are none (a fresh start
    holds the base already). Returns the problems found."""
    problems: list[str] = []
    deltas = []
    for row in ledger.active(kind="weight"):
        loaded = row_delta(row)
        if loaded.problem:
            problems.append(loaded.problem)
        if loaded.delta is not None:
            deltas.append(loaded.delta)
    if not deltas and only_if_any:
        return problems
    progress(Progress("replay", 0, len(deltas), f"replaying {len(deltas)} weight edit(s)"))
    actual = runtime.replay(deltas)
    expected = ledger.get_meta(runtime.state_key)
    if expected is None:
        ledger.set_meta(runtime.state_key, actual)
    elif expected != actual:
        problems.append(f"weights after replaying the ledger do not match its fingerprint ({actual[:12]} != "
                        f"{expected[:12]}): the base model changed or a delta was altered; see `kbchat verify`")
    return problems


def add_patches(runtime: ModelRuntime, rows: Sequence[StoredEdit]) -> list[str]:
    """Switch on the in-model patches of the serac edits among `rows`; returns the problems found (a
    delta missing or altered is not applied)."""
    problems = []
    for row in rows:
        if row.method != "serac":
            continue
        loaded = row_delta(row)
        if loaded.problem:
            problems.append(loaded.problem)
        if loaded.delta is not None:
            runtime.add_patch(row.id, loaded.delta)
    return problems
