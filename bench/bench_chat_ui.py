"""How a long saved conversation behaves in the TUI (issue #13): a chat of 1,000 messages (500
questions and answers, on the scripted service so that only the UI is measured) — seconds from asking
to open it until every message is shown, and the time each scrolling key takes to be handled and
painted (page up from the bottom to the top, then down again, then j/k through messages). The same keys
on a chat of 20 messages, in the same run, are the baseline: "without lag" means a key in the long
chat costs about what it costs in a short one (the ratio is printed).

    .venv/bin/python -m bench.bench_chat_ui [--pairs 500] [--json bench/results/chat-ui-1000.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kbchat.tui import KbchatApp
from tests.fake_service import FakeChatService

TARGET_OPEN_S = 1.0
BASELINE_PAIRS = 10  # the short chat the keys are compared with


def long_chat(fake: FakeChatService, pairs: int) -> int:
    chat = fake.new_chat("a long conversation")
    for i in range(pairs):
        question = f"Question {i}: where is the Eiffel Tower, and what is the capital of France?"
        fake.say(chat.id, question).result()
    return chat.id


async def wait(pilot, predicate, timeout: float = 120.0) -> None:
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError("the TUI did not get there in time")
        await pilot.pause(0.005)


def shown(app: KbchatApp, pairs: int) -> bool:
    """Whether the chat is open: its answers mounted or waiting above (a long chat mounts its last
    messages first), and nothing left to lay out."""
    log = app.chat.log_view
    return not app.chat.loading and len(log.messages()) + len(log.pending) == 2 * pairs


async def timed_keys(pilot, keys: list[str], cpu: list[float] | None = None) -> list[float]:
    """Wall seconds per key, from the key arriving until the app is idle again (handled, laid out and
    painted); the process's CPU seconds per key go to `cpu` (other jobs on a shared machine stretch the
    first, hardly the second). Keys are sent as the terminal driver sends them, as `Pilot.press` does,
    but without its wait, which walks every mounted widget three times per key: a cost of the test
    harness, proportional to the chat's length, that a user's terminal does not have."""
    app = pilot.app
    out = []
    for key in keys:
        started, started_cpu = time.perf_counter(), time.process_time()
        await app._press_keys([key])  # returns once the app is idle (textual's wait_for_idle)
        app.screen._on_timer_update()  # paint now rather than at the next frame
        out.append(time.perf_counter() - started)
        if cpu is not None:
            cpu.append(time.process_time() - started_cpu)
    await pilot.pause()
    return out


async def measure(pairs: int, size: tuple[int, int]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        fake = FakeChatService(chats_db=f"{tmp}/chats.db")
        chat_id = long_chat(fake, pairs)
        app = KbchatApp(fake.opener(steps=1))
        async with app.run_test(size=size) as pilot:
            started = time.perf_counter()
            await wait(pilot, lambda: shown(app, pairs))
            await pilot.pause()
            first_open = time.perf_counter() - started
            cpu: list[float] = []
            await pilot.press("ctrl+n")
            await wait(pilot, lambda: not app.chat.log_view.messages())
            started, started_cpu = time.perf_counter(), time.process_time()
            app.chat.open_chat(chat_id)
            await wait(pilot, lambda: shown(app, pairs))
            await pilot.pause()
            reopen, reopen_cpu = time.perf_counter() - started, time.process_time() - started_cpu
            out(f"  {2 * pairs} messages, {size}: opened in {first_open:.2f} s on start, {reopen:.2f} s from the list")
            await pilot.press("up")  # into the messages
            near = await timed_keys(pilot, ["k"] * 20 + ["j"] * 20, cpu)  # among the latest messages
            page_up = await timed_keys(pilot, ["pageup"] * 30, cpu)  # far enough to mount earlier messages
            far = await timed_keys(pilot, ["k"] * 300, cpu)  # reading far back: at most MAX_MOUNTED stay mounted
            page_down = await timed_keys(pilot, ["pagedown"] * 20, cpu)
            steps = [*near, *far]
            out(f"  {size}: keys done; Home (mounting every message) next")
            home = await timed_keys(pilot, ["home"])  # every message mounted
        fake.close()
    keys = page_up + page_down + steps
    return {"messages": 2 * pairs, "size": list(size), "open_on_start_s": round(first_open, 3),
            "open_from_list_s": round(reopen, 3), "open_from_list_cpu_s": round(reopen_cpu, 3),
            "key_cpu_ms_median": round(1000 * statistics.median(cpu), 1),
            "key_cpu_ms_p95": round(1000 * sorted(cpu)[int(0.95 * len(cpu)) - 1], 1),
            "key_ms_median": round(1000 * statistics.median(keys), 1),
            "key_ms_p95": round(1000 * sorted(keys)[int(0.95 * len(keys)) - 1], 1),
            "key_ms_max": round(1000 * max(keys), 1),
            "page_up_ms_median": round(1000 * statistics.median(page_up), 1),
            "select_ms_median": round(1000 * statistics.median(steps), 1),
            "near_latest_key_ms_median": round(1000 * statistics.median(near), 1),
            "far_back_key_ms_median": round(1000 * statistics.median(far), 1),
            "far_back_key_ms_p95": round(1000 * sorted(far)[int(0.95 * len(far)) - 1], 1),
            "home_all_mounted_s": round(home[0], 2)}


def out(line: str) -> None:
    """Print to the real standard output (Textual's test harness may leave sys.stdout redirected)."""
    print(line, file=sys.__stdout__, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    for size in ((80, 24), (160, 40)):
        short = asyncio.run(measure(BASELINE_PAIRS, size))
        long = asyncio.run(measure(args.pairs, size))
        long["key_vs_short_chat"] = round(long["key_ms_median"] / short["key_ms_median"], 2)
        long["key_cpu_vs_short_chat"] = round(long["key_cpu_ms_median"] / short["key_cpu_ms_median"], 2)
        rows += [short, long]
    out("| messages | terminal | open on start (s) | open from the list, wall / CPU (s) | "
        "key wall median / p95 / max (ms) | k/j near the latest / far back, median (ms) | key CPU median / p95 (ms) | "
        "key vs 20 messages, wall / CPU |")
    out("|---|---|---|---|---|---|---|---|")
    for r in rows:
        out(f"| {r['messages']} | {r['size'][0]}×{r['size'][1]} | {r['open_on_start_s']} | "
            f"{r['open_from_list_s']} / {r['open_from_list_cpu_s']} | "
            f"{r['key_ms_median']} / {r['key_ms_p95']} / {r['key_ms_max']} | "
            f"{r['near_latest_key_ms_median']} / {r['far_back_key_ms_median']} | "
            f"{r['key_cpu_ms_median']} / {r['key_cpu_ms_p95']} | "
            f"{r.get('key_vs_short_chat', 1.0)}× / {r.get('key_cpu_vs_short_chat', 1.0)}× |")
    out(f"target: open in under {TARGET_OPEN_S:g} s; keys as fast as in a short chat")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": "python -m bench.bench_chat_ui " + " ".join(sys.argv[1:]),
                                               "machine": platform.processor() or platform.machine(),
                                               "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                                               "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
