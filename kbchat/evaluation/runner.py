"""`kbchat bench`: edit every case of a standard dataset and check it like EasyEdit does.

Each case is written with the chosen method through the same engine the chat uses
(`edit_request`), measured with the audit's checks (`kbchat.audit.run_checks`) on probes taken
from the dataset itself (`kbchat.evaluation.probes.case_probes`: its paraphrases, neighbourhood
prompts, portability questions and generation prompts), and undone. With `sequential=True` the
edits are kept instead, each checked right after it is made, all re-checked for reliability once
the last is in, then all undone. `kbchat.evaluation.tables.format_table` prints the result.

Figures are averaged per case first (a case with ten neighbourhood prompts weighs as much as one
with one), then over cases. Teacher-forced scores are EasyEdit's token accuracy (reliability,
generalization, portability) and, for locality, how little P(expected) moved; generation figures
are the share of probes whose real answer names the expected one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from kbchat.audit.checks import MODES, EditView, entropy_of, run_checks
from kbchat.audit.probes import FLUENCY, METRICS, RELIABILITY, Probe, with_metric
from kbchat.config import ALL_METHODS
from kbchat.errors import KbchatError
from kbchat.evaluation.datasets import DatasetError, EditCase, read_cases
from kbchat.evaluation.probes import MAX_PROBES, case_probes
from kbchat.records import CheckRecord, EditRecord, Progress, ProgressFn, no_progress
from methods.requests import EditRequest


class BenchDataError(KbchatError):
    """The benchmark file cannot be read as edit cases; the message names the file and the record."""

    exit_code = 2


class BenchChat(Protocol):
    """What the runner needs from the engine."""

    def edit_request(self, request: EditRequest, *, method: str, progress: ProgressFn = ...) -> EditRecord: ...

    def audit_view(self, edit_id: int) -> EditView: ...

    def revert(self, edit_id: int) -> EditRecord: ...


# ------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class CaseResult:
    """One case: its edit, the time the edit took, and its checks.

    `final` holds, in sequential editing, the reliability checks re-run after the last edit.
    `error` is set (and `checks` empty or partial) when the edit or its checks failed.
    """

    case_id: str
    subject: str
    target: str
    edit_id: int | None = None
    seconds: float | None = None
    checks: tuple[CheckRecord, ...] = ()
    final: tuple[CheckRecord, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class BenchResult:
    data: str
    method: str
    sequential: bool
    cases: tuple[CaseResult, ...]
    skipped: int = 0  # records that state no usable edit (zsRE's empty targets), left out
    max_probes: int = MAX_PROBES

    @property
    def completed(self) -> list[CaseResult]:
        return [c for c in self.cases if c.error is None]

    @property
    def failed(self) -> list[CaseResult]:
        return [c for c in self.cases if c.error is not None]

    def seconds_per_edit(self) -> float | None:
        """Median wall time of computing and applying one edit (checks excluded)."""
        times = [c.seconds for c in self.cases if c.seconds is not None]
        return statistics.median(times) if times else None

    def metrics(self) -> dict[str, dict[str, dict[str, float | int]]]:
        """metric -> mode -> {"score", "passed", "cases"}: means over the cases that have such
        checks (each case's checks averaged first). Scores and pass rates are fractions in [0, 1],
        except fluency's score, the n-gram entropy after the edit."""
        return _aggregate([c.checks for c in self.completed])

    def retention(self) -> dict[str, dict[str, float | int]]:
        """Sequential editing: mode -> figures of the reliability re-checks after the last edit."""
        finals = [c.final for c in self.completed if c.final]
        return _aggregate(finals).get(RELIABILITY, {})

    def fluency(self) -> dict[str, float] | None:
        """Mean n-gram entropy of the fluency generations before and after the edits."""
        pairs = [(entropy_of(c.before), entropy_of(c.after)) for case in self.completed for c in case.checks
                 if c.metric == FLUENCY]
        pairs = [(b, a) for b, a in pairs if b is not None and a is not None]
        if not pairs:
            return None
        return {"before": statistics.fmean(b for b, _ in pairs), "after": statistics.fmean(a for _, a in pairs)}

    def figures(self) -> dict[str, Any]:
        """Everything the table shows, as plain JSON-ready data (`kbchat bench --json`)."""
        return {
            "data": self.data,
            "method": self.method,
            "editing": "sequential" if self.sequential else "single",
            "cases": len(self.completed),
            "failed": len(self.failed),
            "skipped": self.skipped,
            "max_probes": self.max_probes,
            "seconds_per_edit_median": self.seconds_per_edit(),
            "metrics": self.metrics(),
            "fluency_entropy": self.fluency(),
            "retention": self.retention() if self.sequential else None,
            "errors": [{"case_id": c.case_id, "error": c.error} for c in self.failed],
        }

    def to_json(self) -> dict[str, Any]:
        """`figures()` plus every case with its checks."""
        return {**self.figures(), "per_case": [asdict(c) for c in self.cases]}


def _aggregate(per_case: Sequence[Sequence[CheckRecord]]) -> dict[str, dict[str, dict[str, float | int]]]:
    sums: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for checks in per_case:
        groups: dict[tuple[str, str], list[CheckRecord]] = {}
        for check in checks:
            if check.passed is not None:
                groups.setdefault((check.metric, check.mode), []).append(check)
        for key, group in groups.items():
            score = statistics.fmean(c.score if c.score is not None else float(bool(c.passed)) for c in group)
            passed = statistics.fmean(float(bool(c.passed)) for c in group)
            sums.setdefault(key, []).append((score, passed))
    out: dict[str, dict[str, dict[str, float | int]]] = {}
    for metric in METRICS:
        for mode in MODES:
            values = sums.get((metric, mode))
            if values:
                out.setdefault(metric, {})[mode] = {
                    "score": statistics.fmean(s for s, _ in values),
                    "passed": statistics.fmean(p for _, p in values),
                    "cases": len(values),
                }
    return out


# ------------------------------------------------------------------------------------------------
# Running


def load_bench_cases(path: str | Path, limit: int | None = None) -> tuple[list[EditCase], int]:
    """The cases of a benchmark file (any layout `load_cases` reads) and how many unusable records
    were skipped. Raises BenchDataError, naming the file and record, for a malformed file."""
    try:
        return read_cases(path, limit=limit, skip_unusable=True)
    except DatasetError as exc:
        raise BenchDataError(str(exc)) from exc


def run_bench(
    chat: BenchChat,
    path: str | Path,
    method: str,
    limit: int | None = None,
    sequential: bool = False,
    progress: ProgressFn | None = None,
    max_probes: int = MAX_PROBES,
) -> BenchResult:
    """Edit each case of the benchmark file at `path` with `method`, check it and undo it.

    Single editing (default): each edit is reverted before the next. Sequential: all edits stay
    until the end, where each is re-checked for reliability (`CaseResult.final`) and then all are
    reverted, newest first. Either way every edit made is reverted, also when a check raises.
    An edit that fails (a KbchatError such as EditFailed) or whose probes cannot be scored
    (ValueError) is recorded in its case's `error` and the run goes on.

    Progress events have stage "bench", step = cases done, total = cases. Raises BenchDataError for
    a malformed file and KbchatError for an unknown method.
    """
    if method not in ALL_METHODS:
        raise KbchatError(f"unknown method {method!r}; choose one of: {', '.join(ALL_METHODS)}")
    report = progress or no_progress
    cases, skipped = load_bench_cases(path, limit)
    total = len(cases)
    results: list[CaseResult] = []
    kept: list[tuple[int, int, list[Probe]]] = []  # sequential: (result index, edit id, probes)
    try:
        for step, case in enumerate(cases):
            report(Progress("bench", step, total, f"case {case.case_id}: {method} edit of {case.request.subject}"))
            probes = case_probes(case, max_probes)
            result = _edit_and_check(chat, case, method, probes)
            if result.edit_id is not None:
                if sequential:
                    kept.append((len(results), result.edit_id, with_metric(probes, RELIABILITY)))
                else:
                    chat.revert(result.edit_id)
            results.append(result)
        if sequential:
            for done, (index, edit_id, probes) in enumerate(kept):
                report(Progress("bench", total, total, f"re-checking edit {done + 1}/{len(kept)}"))
                results[index] = _recheck(chat, results[index], edit_id, probes)
    finally:
        for _, edit_id, _ in reversed(kept):
            chat.revert(edit_id)
    report(Progress("bench", total, total, "done"))
    return BenchResult(str(path), method, sequential, tuple(results), skipped, max_probes)


def _edit_and_check(chat: BenchChat, case: EditCase, method: str, probes: Sequence[Probe]) -> CaseResult:
    """Make the case's edit and run its checks; the edit stays (the caller reverts it)."""
    base = CaseResult(case.case_id, case.request.subject, case.request.target)
    started = time.perf_counter()
    try:
        record = chat.edit_request(case.request, method=method, progress=no_progress)
    except KbchatError as exc:
        return replace(base, error=f"edit failed: {exc}")
    seconds = time.perf_counter() - started
    checks: list[CheckRecord] = []
    try:
        run_checks(chat.audit_view(record.id), probes, on_check=checks.append)
    except ValueError as exc:
        return replace(base, edit_id=record.id, seconds=seconds, checks=tuple(checks), error=f"checks failed: {exc}")
    except BaseException:
        chat.revert(record.id)  # not kept by the caller, who never sees this edit's id
        raise
    return replace(base, edit_id=record.id, seconds=seconds, checks=tuple(checks))


def _recheck(chat: BenchChat, result: CaseResult, edit_id: int, probes: Sequence[Probe]) -> CaseResult:
    try:
        final = run_checks(chat.audit_view(edit_id), probes, baseline=False)
    except (KbchatError, ValueError) as exc:
        return replace(result, error=f"re-check failed: {exc}")
    return replace(result, final=tuple(final))
