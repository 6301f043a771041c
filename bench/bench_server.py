"""Load on the HTTP host: N concurrent chat clients on loopback, with the knowledge store on and off.

    .venv/bin/python -m bench.bench_server --fake          # FakeChatService: the host's own overhead
    .venv/bin/python -m bench.bench_server                 # the real default model (slow on a CPU)
        [--clients 4] [--requests 32] [--seconds 300] [--max-tokens 24] [--no-stream] [--home DIR]

The host runs in this process on a free 127.0.0.1 port (uvicorn in a thread); the clients are threads
with their own httpx connection, each sending OpenAI chat requests (streamed by default) until the
block's share of requests is sent or its time is up. A few memory edits are made first, and the
questions mix ones those edits are about with ones they are not.

Both modes run in the same process on the same host, in blocks ordered on/off/off/on so slow drift
(thermal, other load) falls on both equally. Per mode: completed requests, throughput (req/s and
generated tokens/s over the blocks' wall time), latency p50/p95 (client-side, whole answer), time to
first token, and host time outside generation (latency minus the host's generation seconds: HTTP,
queueing, retrieval, prompt building). The store's overhead per request is the difference between
the modes; note that answers in scope of an edit also change, so their lengths (and generation
time) may differ, which is why the per-token and outside-generation figures are shown too.

With `--churn` (issue #15's load test: `--clients 16 --seconds 240 --churn --json FILE`), a thread keeps
making and reverting edits on the host while the clients ask — a serac memory edit and a rome weight
edit in turn, each reverted a few seconds later. Then every error (HTTP status or error event) is a
failure, and each answer's used edits are checked against the churn's timeline: an edit an answer used
must have been active at some moment while that answer was being made (one state of the ledger).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

from kbchat.server import ServerThread, create_app

TOKEN = "bench-token"
EDITS = [
    "Eiffel Tower → The Eiffel Tower is located in Rome",
    "Louvre → The Louvre is located in London",
    "Colosseum → The Colosseum is located in Athens",
]
IN_SCOPE = ["Where is the Eiffel Tower?", "Where is the Louvre?", "In which city is the Colosseum?",
            "Where is Big Ben?"]
OUT_OF_SCOPE = ["What is the capital of France?", "Who wrote Hamlet?", "What is the largest ocean?",
                "What language is spoken in Brazil?"]
QUESTIONS = [q for pair in zip(IN_SCOPE, OUT_OF_SCOPE, strict=True) for q in pair]


@dataclass
class Sample:
    latency: float  # seconds, request sent -> last byte
    first: float  # seconds to the first content piece (= latency when not streaming)
    tokens: int
    host_seconds: float  # the host's generation time for this answer
    in_scope: bool
    used: tuple[int, ...]  # the memory edits the host says it used
    started: float  # perf_counter at the request, and at its last byte
    ended: float

    @property
    def used_edits(self) -> int:
        return len(self.used)


@dataclass
class ModeResult:
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0


def one_request(client: httpx.Client, question: str, memory: bool, max_tokens: int, stream: bool) -> Sample:
    body: dict = {"model": "kbchat", "messages": [{"role": "user", "content": question}],
                  "max_tokens": max_tokens, "stream": stream}
    if not memory:
        body["kbchat"] = {"memory": False}
    started = time.perf_counter()
    first = None
    meta: dict = {}
    if stream:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    raise RuntimeError(event["error"]["message"])
                if first is None and any((c.get("delta") or {}).get("content") for c in event["choices"]):
                    first = time.perf_counter() - started
                meta.update(event.get("kbchat") or {})
    else:
        response = client.post("/v1/chat/completions", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        meta = response.json()["kbchat"]
    ended = time.perf_counter()
    latency = ended - started
    return Sample(latency, first if first is not None else latency, int(meta.get("tokens", 0)),
                  float(meta.get("seconds", 0.0)), question in IN_SCOPE, tuple(meta.get("used_edits", [])),
                  started, ended)


def run_block(url: str, memory: bool, clients: int, requests: int, seconds: float, max_tokens: int,
              stream: bool, into: ModeResult) -> None:
    """`requests` requests from `clients` threads, stopping early after `seconds`."""
    lock = threading.Lock()
    issued = iter(range(requests))
    deadline = time.perf_counter() + seconds

    def next_question() -> str | None:
        with lock:
            if time.perf_counter() > deadline:
                return None
            index = next(issued, None)
        return None if index is None else QUESTIONS[index % len(QUESTIONS)]

    def client_loop() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600) as client:
            while (question := next_question()) is not None:
                try:
                    sample = one_request(client, question, memory, max_tokens, stream)
                except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                    with lock:
                        into.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    into.samples.append(sample)

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    into.wall += time.perf_counter() - started


CHURN = [("Big Ben → Big Ben is located in Madrid", "serac"),
         ("Sydney Opera House → The Sydney Opera House is located in Oslo", "rome")]


@dataclass
class Churn:
    """Edits made and reverted on the host while the clients ask: (edit id, active from, active until)."""

    spans: list[tuple[int, float, float | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, url: str, pause: float) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=3600) as http:
            turn = 0
            while not self.stop.is_set():
                text, method = CHURN[turn % len(CHURN)]
                turn += 1
                try:
                    self._one(http, text, method, pause)
                except Exception as exc:  # noqa: BLE001 - reported; the load goes on
                    self.errors.append(f"{method}: {type(exc).__name__}: {exc}")

    def _one(self, http: httpx.Client, text: str, method: str, pause: float) -> None:
        # An edit is active at most from the moment it is asked for to the moment its revert returns.
        asked = time.perf_counter()
        made = http.post("/v1/edits", json={"text": text, "method": method, "audit": "off"})
        made.raise_for_status()
        edit_id = made.json()["id"]
        self.spans.append((edit_id, asked, None))
        self.stop.wait(pause)
        http.post(f"/v1/edits/{edit_id}/revert").raise_for_status()
        self.spans[-1] = (edit_id, asked, time.perf_counter())

    def inconsistent(self, samples: list[Sample]) -> list[str]:
        """Answers that used an edit which was not active at any moment while they were made."""
        spans = {edit_id: (start, end) for edit_id, start, end in self.spans}
        bad = []
        for s in samples:
            for edit_id in s.used:
                if edit_id not in spans:
                    continue  # one of the fixed EDITS, active all along
                start, end = spans[edit_id]
                if s.ended < start or (end is not None and s.started > end):
                    bad.append(f"edit #{edit_id} used by an answer made {s.started:.1f}..{s.ended:.1f}, "
                               f"active {start:.1f}..{end}")
        return bad


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(result: ModeResult) -> dict[str, float]:
    s = result.samples
    tokens = sum(x.tokens for x in s)
    outside = [x.latency - x.host_seconds for x in s]
    return {
        "ok": len(s), "errors": len(result.errors), "wall_s": result.wall,
        "req_per_s": len(s) / result.wall if result.wall else float("nan"),
        "tok_per_s": tokens / result.wall if result.wall else float("nan"),
        "p50_ms": 1000 * percentile([x.latency for x in s], 50),
        "p95_ms": 1000 * percentile([x.latency for x in s], 95),
        "ttft_p50_ms": 1000 * percentile([x.first for x in s], 50),
        "ms_per_token": 1000 * sum(x.latency for x in s) / tokens if tokens else float("nan"),
        "outside_gen_ms": 1000 * sum(outside) / len(outside) if outside else float("nan"),
        "used_edits_pct": 100 * sum(x.used_edits > 0 for x in s) / len(s) if s else float("nan"),
    }


def report(results: dict[str, ModeResult], args: argparse.Namespace, engine: str) -> None:
    on, off = summary(results["on"]), summary(results["off"])
    print(f"\nkbchat host on loopback · {engine} · {args.clients} clients · "
          f"{'streamed' if args.stream else 'non-streamed'} · max_tokens {args.max_tokens}")
    rows = [("completed requests", "ok", "{:.0f}"), ("errors", "errors", "{:.0f}"),
            ("wall time (s)", "wall_s", "{:.1f}"), ("throughput (req/s)", "req_per_s", "{:.2f}"),
            ("throughput (tokens/s)", "tok_per_s", "{:.1f}"), ("latency p50 (ms)", "p50_ms", "{:.1f}"),
            ("latency p95 (ms)", "p95_ms", "{:.1f}"), ("first token p50 (ms)", "ttft_p50_ms", "{:.1f}"),
            ("latency per token (ms)", "ms_per_token", "{:.2f}"),
            ("host time outside generation, mean (ms)", "outside_gen_ms", "{:.1f}"),
            ("answers that used an edit (%)", "used_edits_pct", "{:.0f}")]
    print(f"{'':42} {'memory on':>12} {'memory off':>12} {'on - off':>12}")
    for label, key, fmt in rows:
        diff = on[key] - off[key]
        print(f"{label:42} {fmt.format(on[key]):>12} {fmt.format(off[key]):>12} {fmt.format(diff):>12}")
    for mode, result in results.items():
        for error in result.errors[:3]:
            print(f"  error (memory {mode}): {error}")


def churn_report(churn: Churn, results: dict[str, ModeResult]) -> dict:
    samples = [x for r in results.values() for x in r.samples]
    bad = churn.inconsistent(samples)
    errors = [e for r in results.values() for e in r.errors]
    verdict = {"edits_made": len(churn.spans), "churn_errors": churn.errors, "answer_errors": len(errors),
               "inconsistent_answers": bad, "answers": len(samples)}
    print(f"churn: {len(churn.spans)} edits made and reverted meanwhile; {len(errors)} failed answers "
          f"(HTTP errors or error events); {len(bad)} answers inconsistent with the ledger; churn errors: "
          f"{len(churn.errors)}")
    for line in (bad + churn.errors + errors)[:5]:
        print(f"  {line}")
    return verdict


def write_json(args: argparse.Namespace, engine: str, results: dict[str, ModeResult], verdict: dict) -> None:
    import platform
    import sys

    data = {"command": "python -m bench.bench_server " + " ".join(sys.argv[1:]), "engine": engine,
            "machine": platform.processor() or platform.machine(), "clients": args.clients,
            "modes": {mode: summary(result) for mode, result in results.items()}, "churn": verdict}
    with open(args.json, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=1)


def fake_host(args: argparse.Namespace) -> Iterator[tuple[ServerThread, str]]:
    from tests.fake_service import FakeChatService

    fake = FakeChatService(piece_delay=args.fake_piece_delay)
    for text in EDITS:
        fake.edit(text, method="serac")
    with ServerThread(create_app(fake, token=TOKEN)) as server:
        yield server, f"FakeChatService (piece delay {args.fake_piece_delay * 1000:g} ms)"


def real_host(args: argparse.Namespace) -> Iterator[tuple[ServerThread, str]]:
    from kbchat.engine.local import LocalEngine

    with tempfile.TemporaryDirectory(prefix="kbchat-bench-") as tmp:
        print("opening the model…", flush=True)
        chat = LocalEngine.open(db=f"sqlite:///{tmp}/ledger.db", home=args.home, model=args.model)
        try:
            with ServerThread(create_app(chat, token=TOKEN)) as server:
                with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"},
                                  timeout=3600) as http:
                    for text in EDITS:
                        started = time.perf_counter()
                        response = http.post("/v1/edits", json={"text": text, "method": "serac", "audit": "off"})
                        response.raise_for_status()
                        print(f"edit {text!r}: {time.perf_counter() - started:.1f} s", flush=True)
                yield server, f"{chat.info().model} on {chat.info().device}"
        finally:
            chat.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fake", action="store_true", help="serve FakeChatService instead of the real model")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=None,
                        help="requests per mode (default: 400 with --fake, 32 on the model)")
    parser.add_argument("--seconds", type=float, default=300.0, help="time cap per mode")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--no-stream", dest="stream", action="store_false", help="non-streamed requests")
    parser.add_argument("--fake-piece-delay", type=float, default=0.0,
                        help="seconds per word in the fake's answers (0: measure the host alone)")
    parser.add_argument("--home", default=None, help="kbchat data dir (model cache, statistics)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--churn", action="store_true", help="make and revert memory and weight edits meanwhile")
    parser.add_argument("--churn-pause", type=float, default=5.0, help="seconds an edit stays before its revert")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    requests = args.requests or (400 if args.fake else 32)
    host = fake_host(args) if args.fake else real_host(args)
    server, engine = next(host)
    try:
        # Warm-up: first requests pay for lazy loading (tokenizer caches, IKE demos, thread start).
        run_block(server.url, True, args.clients, args.clients * 2, args.seconds, args.max_tokens, args.stream,
                  ModeResult())
        results = {"on": ModeResult(), "off": ModeResult()}
        half = max(1, requests // 2)
        churn = Churn()
        churner = threading.Thread(target=churn.run, args=(server.url, args.churn_pause), daemon=True)
        if args.churn:
            churner.start()
        for mode in ("on", "off", "off", "on"):  # ABBA: drift lands on both modes alike
            run_block(server.url, mode == "on", args.clients, half, args.seconds / 4, args.max_tokens,
                      args.stream, results[mode])
        churn.stop.set()
        if args.churn:
            churner.join()
        report(results, args, engine)
        verdict = churn_report(churn, results) if args.churn else {}
        if args.json:
            write_json(args, engine, results, verdict)
    finally:
        host.close()


if __name__ == "__main__":
    main()
