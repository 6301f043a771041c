"""Edit records for training MEND / InstructEdit editors, from `../shared/data` training splits only.

Three tasks (the names of `methods.mend.instruct.DEFAULT_TASKS`):

- counterfactual completion: CounterFact (`counterfact-train.json`, flattened EasyEdit layout): the
  prompt is completed by `target_new`; the paraphrase is `rephrase_prompt`; the locality input is
  `locality_prompt` (a neighbour: another subject, the same relation) with its true answer.
- question answering: zsRE (`zsre-train-1k.json`, MEND layout): the question `src` answered by
  `alt`; the paraphrase is `rephrase`; the locality input is the NQ question `loc` ("nq question:
  ..." turned into a question) with its answer `loc_ans`.
- chat: a question put through the model's chat template, ending where the assistant's reply begins;
  the reply is the new answer. The questions come from CounterFact cases whose relation kbchat knows
  (`kbchat.audit.relations.questions`: the first asks, the second is the paraphrase) and from zsRE
  (`src` / `rephrase`). The locality input is an NQ question from zsRE in the same chat format,
  its answer the reply. Every locality input comes with its answer (`EditRecord.locality_answer`):
  training's locality term is taken where that answer is predicted.

`counterfact-val.json` is never read here (the benchmark's held-out cases). The validation split is
held out *by case*, grouped by subject and seeded: a held-out case (and any other case about the same
subject, in either file) gives no record of any task to training, and the locality inputs of training
records come from training cases only.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from kbchat.errors import KbchatError
from kbchat.runtime.decoding import chat_text
from methods.mend import EditRecord
from methods.mend.instruct import CHAT, COUNTERFACT, QUESTION_ANSWERING
from methods.requests import EditRequest

TASKS = (COUNTERFACT.name, QUESTION_ANSWERING.name, CHAT.name)
TASK_ALIASES = {"counterfact": COUNTERFACT.name, "completion": COUNTERFACT.name, "zsre": QUESTION_ANSWERING.name,
                "qa": QUESTION_ANSWERING.name, "chat": CHAT.name}
COUNTERFACT_FILE = Path("counterfact") / "counterfact-train.json"
ZSRE_FILE = Path("zsre") / "zsre-train-1k.json"
FORBIDDEN = "counterfact-val.json"  # the benchmark's cases: never training data


class TrainingDataError(KbchatError):
    code = "training_data"
    exit_code = 2


def default_data_dir() -> Path:
    """`../shared/data` beside the checkout (`/work/shared/data` here)."""
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def task_name(text: str) -> str:
    """A task's full name from its name or a short alias ("chat", "qa", "zsre", "counterfact")."""
    key = text.strip().lower()
    if key in TASKS:
        return key
    if key in TASK_ALIASES:
        return TASK_ALIASES[key]
    known = ", ".join(sorted(set(TASK_ALIASES) | set(TASKS)))
    raise TrainingDataError(f"unknown task {text!r} (known: {known})")


@dataclass(frozen=True)
class Split:
    train: list[EditRecord]
    val: list[EditRecord]
    files: tuple[Path, ...]  # the data files read

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for part, records in (("train", self.train), ("val", self.val)):
            for r in records:
                out.setdefault(r.task, {"train": 0, "val": 0})[part] += 1
        return out


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load(path: Path) -> list[dict]:
    if path.name == FORBIDDEN:
        raise TrainingDataError(f"{path} is the held-out benchmark split; training never reads it")
    if not path.is_file():
        raise TrainingDataError(f"training data file not found: {path} (pass --data DIR)")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainingDataError(f"cannot read {path}: {exc}") from exc
    if not isinstance(rows, list):
        raise TrainingDataError(f"{path}: expected a JSON list of records")
    return rows


def _question(text: str) -> str:
    """zsRE's locality field "nq question: who sang ..." as a question: "Who sang ...?"."""
    text = text.strip()
    if text.lower().startswith("nq question:"):
        text = text[len("nq question:"):].strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith("?") else text + "?"


def chat_formatter(tokenizer) -> Callable[[str, str | None], str]:
    """(question, reply or None) -> the chat text, ending where the assistant's reply begins (the reply
    appended after it when given): exactly what the app answers from (`decoding.chat_text`)."""

    def fmt(question: str, reply: str | None = None) -> str:
        text = chat_text(tokenizer, [{"role": "user", "content": question}])
        return text if reply is None else f"{text}{reply}"

    return fmt


def _cf_chat_questions(row: dict) -> list[str]:
    """Chat questions of a CounterFact case from kbchat's relation table ([] if the relation is unknown)."""
    from kbchat.audit.relations import questions, relation_of

    try:
        request = EditRequest(row["subject"], row["prompt"], row["target_new"])
    except (ValueError, KeyError):
        return []
    if relation_of(request) is None:
        return []
    return questions(request)


Chat = Callable[[str], str]
ChatLocality = dict[str, list[tuple[str, str]]]


def build(
    data_dir: Path | None = None,
    tasks: Iterable[str] = TASKS,
    tokenizer=None,
    val_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
) -> Split:
    """Training and validation records for `tasks`; `tokenizer` is needed for the chat task.

    The subjects of both sources are shuffled with `seed` and the first `val_fraction` held out: every
    case about a held-out subject (CounterFact has several per subject; zsRE shares a few) goes to
    validation. Within each
    part the records are shuffled (seeded) and, with `limit`, at most `limit` kept per task and part.
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    wanted = [task_name(t) for t in tasks]
    if not wanted:
        raise TrainingDataError("no tasks given")
    if CHAT.name in wanted and tokenizer is None:
        raise TrainingDataError("the chat task needs the model's tokenizer")
    chat = chat_formatter(tokenizer) if tokenizer is not None else None
    # Both files are always read: the held-out subjects are drawn from both, so that the split is the
    # same whichever tasks are trained (single-task and multi-task editors are validated alike).
    files = [data_dir / COUNTERFACT_FILE, data_dir / ZSRE_FILE]
    cf_rows, zsre_rows = _load(files[0]), _load(files[1])

    rng = random.Random(seed)
    held = _held_out([_key(r["subject"]) for r in cf_rows] + [_key(r["subject"]) for r in zsre_rows],
                     val_fraction, rng)
    cf_val = {str(r.get("case_id", i)) for i, r in enumerate(cf_rows) if _key(r["subject"]) in held}
    zs_val = {str(i) for i, r in enumerate(zsre_rows) if _key(r["subject"]) in held}
    parts: dict[str, dict[str, list[EditRecord]]] = {"train": {}, "val": {}}
    chat_loc = _chat_locality(zsre_rows, zs_val, chat)
    for record, part in _counterfact_records(cf_rows, cf_val, wanted, chat, chat_loc):
        _add(parts[part], record)
    for record, part in _zsre_records(zsre_rows, zs_val, wanted, chat, chat_loc):
        _add(parts[part], record)
    out = {part: _shuffled(parts[part], wanted, rng, limit, interleave=part == "val") for part in ("train", "val")}
    for task in wanted:
        if not any(r.task == task for r in out["train"]):
            raise TrainingDataError(f"no training records for task {task!r} in {data_dir}")
    return Split(out["train"], out["val"], tuple(files))


def _chat_locality(zsre_rows: list[dict], zs_val: set[str], chat: Chat | None) -> ChatLocality:
    """Chat locality inputs per part: answered NQ questions of the same part's zsRE cases."""
    chat_loc: ChatLocality = {"train": [], "val": []}
    if chat is not None:
        for i, row in enumerate(zsre_rows):
            chat_loc["val" if str(i) in zs_val else "train"].append((chat(_question(row["loc"])), row["loc_ans"]))
        seen_in_val = set(chat_loc["val"])  # NQ questions recur across zsRE rows: keep the pools apart
        chat_loc["train"] = [t for t in chat_loc["train"] if t not in seen_in_val]
    return chat_loc


def _counterfact_records(rows: list[dict], val: set[str], wanted: list[str], chat: Chat | None,
                         chat_loc: ChatLocality) -> Iterator[tuple[EditRecord, str]]:
    """(record, part) of the CounterFact rows for the wanted tasks."""
    for i, row in enumerate(rows):
        part = "val" if str(row.get("case_id", i)) in val else "train"
        if COUNTERFACT.name in wanted:
            yield EditRecord(row["prompt"], row["subject"], row["target_new"],
                             row.get("rephrase_prompt") or row["prompt"], row["locality_prompt"],
                             COUNTERFACT.name, row["locality_ground_truth"]), part
        if CHAT.name in wanted and chat is not None:
            qs = _cf_chat_questions(row)
            if len(qs) >= 2 and chat_loc[part]:
                loc, answer = chat_loc[part][i % len(chat_loc[part])]
                yield EditRecord(chat(qs[0]), row["subject"], row["target_new"], chat(qs[1]), loc,
                                 CHAT.name, answer), part


def _zsre_records(rows: list[dict], val: set[str], wanted: list[str], chat: Chat | None,
                  chat_loc: ChatLocality) -> Iterator[tuple[EditRecord, str]]:
    """(record, part) of the zsRE rows with a target, for the wanted tasks."""
    for i, row in enumerate(rows):
        part = "val" if str(i) in val else "train"
        target = row["alt"]
        if not str(target).strip():
            continue
        para = row.get("rephrase") or row["src"]
        if QUESTION_ANSWERING.name in wanted:
            yield EditRecord(row["src"], row["subject"], target, para, _question(row["loc"]),
                             QUESTION_ANSWERING.name, row["loc_ans"]), part
        if CHAT.name in wanted and chat is not None and chat_loc[part]:
            loc, answer = chat_loc[part][(i * 7 + 3) % len(chat_loc[part])]  # another case's question
            yield EditRecord(chat(row["src"]), row["subject"], target, chat(para), loc, CHAT.name, answer), part


def _shuffled(groups: dict[str, list[EditRecord]], wanted: list[str], rng: random.Random, limit: int | None,
              interleave: bool) -> list[EditRecord]:
    """One part's records: each task's group shuffled (in place, with `rng`) and cut to `limit`, tasks in
    `wanted` order; interleaved when asked, so that the first few records cover every task."""
    records: list[EditRecord] = []
    for task in wanted:
        group = groups.get(task, [])
        rng.shuffle(group)
        records.extend(group[:limit] if limit is not None else group)
    return _interleave(records, wanted) if interleave else records


def _add(part: dict[str, list[EditRecord]], record: EditRecord) -> None:
    part.setdefault(record.task, []).append(record)


def _key(subject: str) -> str:
    return " ".join(subject.lower().split())


def _held_out(keys: Sequence[str], fraction: float, rng: random.Random) -> set[str]:
    unique = sorted(set(keys))
    rng.shuffle(unique)
    n = max(1, round(len(unique) * fraction)) if unique else 0
    return set(unique[:n])


def _interleave(records: list[EditRecord], tasks: Sequence[str]) -> list[EditRecord]:
    """Round-robin over tasks, so that any prefix of the validation list mixes them evenly."""
    groups = [[r for r in records if r.task == t] for t in tasks]
    out: list[EditRecord] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out


def held_out_zsre_rows(data_dir: Path | None = None, seed: int = 0, val_fraction: float = 0.1) -> list[dict]:
    """The zsRE rows (MEND layout, unchanged) that `build(seed=seed)` holds out of training: the zsRE
    cases an editor trained with that seed never saw (about 100), for benchmarks. (The first few of
    them were scored during training's validation, which picks the checkpoint, but none was trained on.)"""
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    cf_rows = _load(data_dir / COUNTERFACT_FILE)
    zsre_rows = _load(data_dir / ZSRE_FILE)
    held = _held_out([_key(r["subject"]) for r in cf_rows] + [_key(r["subject"]) for r in zsre_rows],
                     val_fraction, random.Random(seed))
    return [r for r in zsre_rows if _key(r["subject"]) in held]  # the same split as build(seed=seed)
