"""Standard knowledge-editing benchmarks, read into one record type, `EditCase`.

Three layouts are recognised from the records themselves:

- CounterFact in ROME's layout: `requested_rewrite{prompt ("{}" for the subject), subject,
  target_new.str, target_true.str}`, `paraphrase_prompts`, `neighborhood_prompts`,
  `attribute_prompts`, `generation_prompts`.
- The flattened EasyEdit/MEND layout (CounterFact and KnowEdit): `prompt, subject, target_new`,
  optionally `case_id, ground_truth, rephrase_prompt` (or `rephrase`), `locality_prompt` and
  `locality_ground_truth` (or a KnowEdit `locality` object), and `portability`.
- zsRE in MEND's layout: `subject, src, rephrase, alt, answers, loc, loc_ans`.

`portability` may be EasyEdit's `{"New Question": ..., "New Answer": ...}`, KnowEdit's
`{"Reasoning": [{"prompt", "ground_truth"}, ...], "Subject_Aliasing": [...], ...}` or a plain list
of `{"prompt", "ground_truth"}`. Where a ground truth is a list of aliases (KnowEdit nests them
two deep), the first is used.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from methods.requests import EditRequest

ROME = "counterfact-rome"
EASYEDIT = "easyedit"
ZSRE = "zsre-mend"

_NQ_PREFIX = "nq question: "

logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A data file that cannot be read as edit cases; the message names the file, the record and the field."""


class UnusableRecord(DatasetError):
    """A well-formed record that states no valid edit: an empty subject or target, or a prompt that
    does not name its subject. MEND's zsRE has a few (an empty `alt`); `load_cases(...,
    skip_unusable=True)` leaves them out."""


@dataclass(frozen=True)
class EditCase:
    """One benchmark edit and the prompts that test it.

    `request.target_true` is the fact being overwritten when the data says so. `neighborhood` and
    `portability` pair a prompt with the answer expected from it: neighbourhood prompts are about
    other subjects and should keep their answer after the edit; portability prompts ask for a
    consequence of the new fact.
    """

    case_id: str
    request: EditRequest
    paraphrases: tuple[str, ...] = ()
    neighborhood: tuple[tuple[str, str], ...] = ()
    portability: tuple[tuple[str, str], ...] = ()
    generation_prompts: tuple[str, ...] = ()
    attribute_prompts: tuple[str, ...] = ()


def detect_layout(record: Mapping[str, Any]) -> str | None:
    """ROME, EASYEDIT or ZSRE for a record of that layout, None if the keys fit none of them."""
    if "requested_rewrite" in record:
        return ROME
    if {"src", "alt"} <= record.keys():
        return ZSRE
    if {"prompt", "subject", "target_new"} <= record.keys():
        return EASYEDIT
    return None


def load_cases(
    path: str | os.PathLike[str], limit: int | None = None, skip_unusable: bool = False
) -> list[EditCase]:
    """The edit cases in a JSON array (or JSON Lines) file, in file order; the first `limit` if given.

    The layout is detected from the first record. Raises DatasetError for an unreadable, empty
    or malformed file, an unknown layout, a record missing a required field or with a field of
    the wrong type, or limit <= 0; UnusableRecord (a DatasetError) for a record that states no
    valid edit, unless `skip_unusable`, which logs and leaves such records out (they do not count
    towards `limit`).
    """
    return read_cases(path, limit, skip_unusable)[0]


def read_cases(
    path: str | os.PathLike[str], limit: int | None = None, skip_unusable: bool = False
) -> tuple[list[EditCase], int]:
    """`load_cases`, and how many unusable records were skipped (0 unless `skip_unusable`)."""
    where = Path(path)
    if limit is not None and limit <= 0:
        raise DatasetError(f"{where}: limit must be positive, got {limit}")
    records = _read_records(where)
    first = _Record(where, 0, records[0])
    layout = detect_layout(first.data)
    if layout is None:
        raise first.error(
            f"unknown layout, keys {sorted(first.data)}; expected CounterFact's 'requested_rewrite', "
            "EasyEdit's 'prompt'/'subject'/'target_new' or zsRE's 'src'/'alt'"
        )
    parse = {ROME: _rome_case, EASYEDIT: _easyedit_case, ZSRE: _zsre_case}[layout]
    cases: list[EditCase] = []
    skipped = 0
    for index, record in enumerate(records):
        if limit is not None and len(cases) == limit:
            break
        try:
            cases.append(parse(_Record(where, index, record)))
        except UnusableRecord as exc:
            if not skip_unusable:
                raise UnusableRecord(f"{exc} (load_cases(..., skip_unusable=True) skips such records)") from exc
            logger.info("skipped %s", exc)
            skipped += 1
    if not cases:
        raise DatasetError(f"{where}: none of the {skipped} records read is a usable edit")
    if skipped:
        logger.warning("%s: skipped %d unusable record(s)", where, skipped)
    return cases, skipped


def _read_records(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if not text.strip():
        raise DatasetError(f"{path}: the file is empty")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DatasetError(
                        f"{path}: line {number}: {exc.msg} (expected a JSON array or JSON Lines, one record a line)"
                    ) from exc
    if not isinstance(records, list):
        raise DatasetError(f"{path}: expected a JSON array of records, got {type(records).__name__}")
    if not records:
        raise DatasetError(f"{path}: no records")
    return records


class _Record:
    """One raw record and where it came from, for field access with one-line errors."""

    def __init__(self, path: Path, index: int, data: Any) -> None:
        self.path, self.index = path, index
        self.data: Mapping[str, Any] = data if isinstance(data, Mapping) else {}
        if not isinstance(data, Mapping):
            raise self.error(f"expected a JSON object, got {type(data).__name__}")

    @property
    def case_id(self) -> str:
        value = self.data.get("case_id")
        return str(value) if value is not None else str(self.index)

    def error(self, problem: str) -> DatasetError:
        label = f"record {self.index}"
        if self.data.get("case_id") is not None:
            label += f" (case_id {self.data['case_id']})"
        return DatasetError(f"{self.path}: {label}: {problem}")

    def get(self, dotted: str, required: bool = True) -> Any:
        """The value at a dotted path ("requested_rewrite.target_new.str"), None if optional and absent."""
        value: Any = self.data
        for depth, key in enumerate(dotted.split(".")):
            if not isinstance(value, Mapping):
                parent = ".".join(dotted.split(".")[:depth])
                raise self.error(f"field '{parent}' should be an object, got {type(value).__name__}")
            if key not in value or value[key] is None:
                if required:
                    raise self.error(f"missing field '{dotted}'")
                return None
            value = value[key]
        return value

    def text(self, dotted: str, blank_ok: bool = False) -> str:
        """A required string field, non-empty unless `blank_ok` (numbers are accepted as their text)."""
        return self.as_text(self.get(dotted), dotted, blank_ok)

    def maybe_text(self, dotted: str) -> str | None:
        """An optional string field; None when absent or blank."""
        value = self.get(dotted, required=False)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return self.as_text(value, dotted)

    def as_text(self, value: Any, field: str, blank_ok: bool = False) -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise self.error(f"field '{field}' should be a string, got {type(value).__name__}")
        if not value.strip() and not blank_ok:
            raise self.error(f"field '{field}' is empty")
        return value

    def answer(self, value: Any, field: str, blank_ok: bool = False) -> str:
        """An answer: a string, ROME's {"str": ...}, or a list of aliases (possibly nested) whose first is used."""
        while isinstance(value, list):
            if not value:
                raise self.error(f"field '{field}' is an empty list")
            value = value[0]
        if isinstance(value, Mapping):
            if "str" not in value:
                raise self.error(f"field '{field}' should have a 'str' entry")
            value = value["str"]
        return self.as_text(value, field, blank_ok).strip()

    def maybe_answer(self, dotted: str) -> str | None:
        """An optional answer field; None when absent, blank or an empty list."""
        value = self.get(dotted, required=False)
        if value is None or value == [] or (isinstance(value, str) and not value.strip()):
            return None
        return self.answer(value, dotted)

    def texts(self, dotted: str) -> tuple[str, ...]:
        """An optional list of prompts (a single string counts as one); () if absent."""
        value = self.get(dotted, required=False)
        if value is None:
            return ()
        items = value if isinstance(value, list) else [value]
        return tuple(self.as_text(item, f"{dotted}[{i}]") for i, item in enumerate(items))

    def request(self, subject_field: str, prompt_field: str, target_field: str, target_true: str | None) -> EditRequest:
        """The EditRequest these fields state; UnusableRecord if they are present but state no edit."""
        subject = self.text(subject_field, blank_ok=True)
        prompt = self.text(prompt_field, blank_ok=True)
        target = self.answer(self.get(target_field), target_field, blank_ok=True)
        for field, value in ((subject_field, subject), (target_field, target)):
            if not value.strip():
                raise UnusableRecord(self.error(f"field '{field}' is empty, so the record states no edit").args[0])
        try:
            return EditRequest(subject=subject, prompt=prompt, target=target, target_true=target_true)
        except ValueError as exc:
            raise UnusableRecord(self.error(f"{exc} (fields '{prompt_field}', '{subject_field}')").args[0]) from exc


def _rome_case(rec: _Record) -> EditCase:
    rewrite = "requested_rewrite"
    target_true = rec.maybe_answer(f"{rewrite}.target_true")
    neighbours = rec.texts("neighborhood_prompts")
    if neighbours and target_true is None:
        raise rec.error(f"neighborhood_prompts need '{rewrite}.target_true.str' as their expected answer")
    request = rec.request(f"{rewrite}.subject", f"{rewrite}.prompt", f"{rewrite}.target_new", target_true)
    return EditCase(
        case_id=rec.case_id,
        request=request,
        paraphrases=rec.texts("paraphrase_prompts"),
        neighborhood=tuple((prompt, request.target_true or "") for prompt in neighbours),
        portability=_portability(rec),
        generation_prompts=rec.texts("generation_prompts"),
        attribute_prompts=rec.texts("attribute_prompts"),
    )


def _easyedit_case(rec: _Record) -> EditCase:
    request = rec.request("subject", "prompt", "target_new", rec.maybe_answer("ground_truth"))
    rephrase_field = next((k for k in ("rephrase_prompt", "rephrase_prompts", "rephrase") if k in rec.data), None)
    return EditCase(
        case_id=rec.case_id,
        request=request,
        paraphrases=rec.texts(rephrase_field) if rephrase_field else (),
        neighborhood=_paired(rec, "locality_prompt", "locality_ground_truth") + _grouped(rec, "locality"),
        portability=_portability(rec),
        generation_prompts=rec.texts("generation_prompts"),
        attribute_prompts=rec.texts("attribute_prompts"),
    )


def _zsre_case(rec: _Record) -> EditCase:
    request = rec.request("subject", "src", "alt", rec.maybe_answer("answers"))
    neighborhood: tuple[tuple[str, str], ...] = ()
    loc = rec.maybe_text("loc")
    if loc is not None:
        # MEND marks its Natural Questions locality prompts; the marker is not part of the question.
        question = loc[len(_NQ_PREFIX) :] if loc.startswith(_NQ_PREFIX) else loc
        neighborhood = ((question, rec.answer(rec.get("loc_ans"), "loc_ans")),)
    return EditCase(
        case_id=rec.case_id,
        request=request,
        paraphrases=rec.texts("rephrase"),
        neighborhood=neighborhood,
        portability=_portability(rec),
    )


def _paired(rec: _Record, prompt_field: str, answer_field: str) -> tuple[tuple[str, str], ...]:
    """Parallel prompt / answer fields (strings or equal-length lists); () when the prompt field is absent."""
    prompts = rec.get(prompt_field, required=False)
    if prompts is None:
        return ()
    answers = rec.get(answer_field)
    if not isinstance(prompts, list):
        return ((rec.as_text(prompts, prompt_field), rec.answer(answers, answer_field)),)
    if not isinstance(answers, list) or len(answers) != len(prompts):
        raise rec.error(f"field '{answer_field}' should be a list as long as '{prompt_field}'")
    return tuple(
        (rec.as_text(p, f"{prompt_field}[{i}]"), rec.answer(a, f"{answer_field}[{i}]"))
        for i, (p, a) in enumerate(zip(prompts, answers, strict=True))
    )


def _qa_items(rec: _Record, value: Any, field: str) -> tuple[tuple[str, str], ...]:
    """{"prompt", "ground_truth"} objects (one, or a list) as (prompt, answer) pairs.

    An object may hold a list of prompts: with a ground-truth list of the same length the two are
    parallel (EasyEdit's `locality_inputs` shape), otherwise every prompt shares the first answer.
    """
    items = value if isinstance(value, list) else [value]
    pairs: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        where = f"{field}[{i}]" if isinstance(value, list) else field
        if not isinstance(item, Mapping) or "prompt" not in item or "ground_truth" not in item:
            raise rec.error(f"field '{where}' should be an object with 'prompt' and 'ground_truth'")
        prompts, truth = item["prompt"], item["ground_truth"]
        if isinstance(prompts, list) and isinstance(truth, list) and len(prompts) == len(truth) > 1:
            answers = [rec.answer(a, f"{where}.ground_truth[{j}]") for j, a in enumerate(truth)]
        else:
            prompts = prompts if isinstance(prompts, list) else [prompts]
            answers = [rec.answer(truth, f"{where}.ground_truth")] * len(prompts)
        pairs.extend(
            (rec.as_text(p, f"{where}.prompt"), a) for p, a in zip(prompts, answers, strict=True)
        )
    return tuple(pairs)


def _grouped(rec: _Record, field: str) -> tuple[tuple[str, str], ...]:
    """KnowEdit's {category: [{"prompt", "ground_truth"}, ...]} (or a bare list of such objects)."""
    value = rec.get(field, required=False)
    if value is None:
        return ()
    if isinstance(value, list):
        return _qa_items(rec, value, field)
    if not isinstance(value, Mapping):
        raise rec.error(f"field '{field}' should be an object or a list, got {type(value).__name__}")
    if {"prompt", "ground_truth"} <= value.keys():
        return _qa_items(rec, value, field)
    pairs: tuple[tuple[str, str], ...] = ()
    for category, items in value.items():
        if items:  # KnowEdit leaves unused categories empty
            pairs += _qa_items(rec, items, f"{field}.{category}")
    return pairs


def _portability(rec: _Record) -> tuple[tuple[str, str], ...]:
    value = rec.get("portability", required=False)
    if isinstance(value, Mapping) and "New Question" in value:
        return _paired(rec, "portability.New Question", "portability.New Answer")
    return _grouped(rec, "portability")
