"""Pure formatting: edits, checks, progress and answers as Rich `Text` or Textual `Content`.

Nothing here knows of widgets or threads; the chat, the audit table and the detail screen all render
through these functions, so an edit looks the same wherever it is shown.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text
from textual.content import Content

from kbchat.config import method_kind
from kbchat.records import CheckRecord, EditRecord, ParsedEdit, Progress

METRIC_ABBREV = {
    "reliability": "rel",
    "generalization": "gen",
    "locality": "loc",
    "portability": "port",
    "fluency": "flu",
}
STATUS_STYLES = {
    "active": "bold green",
    "reverted": "dim",
    "committed": "bold cyan",
    "superseded": "yellow",
    "failed": "bold red",
}
RESULT_MARKS = {True: ("✓", "green"), False: ("✗", "bold red"), None: ("…", "dim")}


def progress_line(progress: Progress) -> str:
    """"optimise 3/10 · loss 0.412 · message" for a progress event."""
    parts = [progress.stage]
    if progress.total:
        parts[0] += f" {progress.step}/{progress.total}"
    elif progress.step:
        parts[0] += f" {progress.step}"
    if progress.loss is not None:
        parts.append(f"loss {progress.loss:.3f}")
    if progress.message:
        parts.append(progress.message)
    return " · ".join(parts)


def clip(text: str, width: int) -> str:
    """`text` cut to `width` characters, the last one an ellipsis when it was longer."""
    return text if len(text) <= width else text[: width - 1] + "…"


# -- checks -----------------------------------------------------------------------------------------


def metric_results(checks: Iterable[CheckRecord]) -> list[tuple[str, bool | None]]:
    """One result per metric, in first-seen order: False if any check failed, else None if any is
    pending, else True."""
    results: dict[str, bool | None] = {}
    for check in checks:
        seen = results.get(check.metric, True)
        if seen is False or check.passed is False:
            results[check.metric] = False
        elif seen is None or check.passed is None:
            results[check.metric] = None
        else:
            results[check.metric] = True
    return list(results.items())


def checks_text(checks: Iterable[CheckRecord], *, compact: bool = False) -> Text:
    """"rel ✓ gen ✗ loc ✓" coloured by result ("r✓ g✗ l✓" when compact); "pending" when there are none."""
    results = metric_results(checks)
    if not results:
        return Text("pending", style="dim")
    text = Text()
    for metric, passed in results:
        mark, style = RESULT_MARKS[passed]
        name = METRIC_ABBREV.get(metric, metric[:4])
        if text:
            text.append(" ")
        text.append(name[0] if compact else f"{name} ", style=style)
        text.append(mark, style=style)
    return text


def check_content(check: CheckRecord) -> Content:
    """One check in full: result, metric, mode, probe, expected, before, after, score."""
    mark, style = RESULT_MARKS[check.passed]
    verdict = {True: "pass", False: "FAIL", None: "pending"}[check.passed]
    score = "" if check.score is None else f"  score {check.score:.2f}"
    lines = [
        Content.assemble((f"{mark} {verdict}", style), "  ", (check.metric, "bold"), f"  · {check.mode}{score}"),
        Content.assemble(("  probe     ", "dim"), check.probe),
        Content.assemble(("  expected  ", "dim"), check.expected),
        Content.assemble(("  before    ", "dim"), check.before if check.before is not None else "—"),
        Content.assemble(("  after     ", "dim"), check.after if check.after is not None else "—"),
    ]
    return Content("\n").join(lines)


# -- edits ------------------------------------------------------------------------------------------


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def edit_summary(record: EditRecord) -> Text:
    """One line: "#3 active serac  Eiffel Tower → Rome  rel ✓ gen ✓ loc ✓"."""
    return Text.assemble(
        (f"#{record.id}", "bold"), " ", status_text(record.status), " ", (record.method, "italic"), "  ",
        record.subject, " → ", (record.target, "bold"), "  ", checks_text(record.checks),
    )


def edit_fields(record: EditRecord) -> Content:
    """The edit's own fields, one per line, for the detail view."""
    rows: list[tuple[str, str | Content]] = [
        ("status", Content.styled(record.status, STATUS_STYLES.get(record.status, ""))),
        ("created", record.created_at.strftime("%Y-%m-%d %H:%M:%S")),
        ("request", record.raw_text),
        ("subject", record.subject),
        ("prompt", record.prompt),
        ("target", Content.styled(record.target, "bold")),
        ("was", record.target_true or "—"),
        ("method", f"{record.method} ({record.kind})"),
    ]
    if record.reverted_at:
        rows.append(("reverted", record.reverted_at.strftime("%Y-%m-%d %H:%M:%S")))
    if record.superseded_by is not None:
        rows.append(("superseded by", f"#{record.superseded_by}"))
    if record.error:
        rows.append(("error", Content.styled(record.error, "red")))
    if record.notes:
        rows.append(("notes", record.notes))
    return Content("\n").join(Content.assemble((f"{name:<13} ", "dim"), value) for name, value in rows)


def edit_card_content(record: EditRecord) -> Content:
    """An edit as a chat card: subject → target, method, status, then one line per check."""
    status_style = STATUS_STYLES.get(record.status, "")
    lines = [
        Content.assemble((record.subject, "bold"), " → ", (record.target, "bold"),
                         ("   was: ", "dim"), record.target_true or "—"),
        Content.assemble(f"{record.method} ({record.kind})", " · ", (record.status, status_style), "  ",
                         Content.from_markup(f"[@click=app.audit({record.id})]details[/]")),
    ]
    if record.error:
        lines.append(Content.styled(record.error, "red"))
    if not record.checks:
        lines.append(Content.styled("checks pending", "dim"))
    for check in record.checks:
        mark, style = RESULT_MARKS[check.passed]
        lines.append(Content.assemble(
            (f"{mark} {check.metric}", style), (f" ({check.mode}) ", "dim"), check.probe, " → ",
            (check.after if check.after is not None else "…", "bold"),
        ))
    return Content("\n").join(lines)


def edit_confirmation(parsed: ParsedEdit, method: str | None) -> Content:
    """The body of the /edit confirmation: what will be written, and how."""
    how = f"{method} ({method_kind(method)} edit)" if method else "engine default"
    rows = [("subject", parsed.subject), ("prompt", parsed.prompt), ("target", parsed.target),
            ("method", how)]
    body = Content("\n").join(
        Content.assemble((f"{name:<8} ", "dim"), (value, "bold" if name == "target" else "")) for name, value in rows
    )
    return Content.assemble(body, "\n\n", ("The model will complete the prompt with the target.", "dim"))


def revert_confirmation(record: EditRecord) -> Content:
    """The body of the revert confirmation."""
    return Content.assemble(
        "Revert edit ", (f"#{record.id}", "bold"), f" ({record.method})?\n\n",
        record.subject, " → ", (record.target, "bold"), "\n\nThe model will answer as before this edit.",
    )


def records_note(heading: str, records: Iterable[EditRecord]) -> Content:
    """A heading line, then one summary line per edit (for /edits and /commit)."""
    lines = [Content(heading)] + [Content.from_rich_text(edit_summary(r)) for r in records]
    return Content("\n").join(lines)
