"""The host with the real default model on a loopback port: the Eiffel Tower story through the `openai`
client and through the TUI as a remote client, and chats in flight while a weight edit runs.

Marked slow: the first edit of a session computes the layer statistics (minutes on a CPU), later ones
take seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from kbchat.remote import RemoteChat
from kbchat.server import ServerThread, create_app

pytestmark = pytest.mark.slow

TOKEN = "real-test-token"
EIFFEL = "Eiffel Tower → The Eiffel Tower is located in Rome"
MAX_TOKENS = 24


@pytest.fixture
def host(real_service) -> Iterator[ServerThread]:
    # A generous timeout: on a loaded CPU an answer may wait minutes behind a weight edit.
    with ServerThread(create_app(real_service, token=TOKEN, request_timeout=1800)) as server:
        yield server


def ask(client: openai.OpenAI, question: str, **kwargs) -> tuple[str, list[int]]:
    completion = client.chat.completions.create(model="kbchat", messages=[{"role": "user", "content": question}],
                                                max_tokens=MAX_TOKENS, **kwargs)
    return completion.choices[0].message.content or "", completion.model_extra["kbchat"]["used_edits"]


def test_eiffel_tower_story_over_http(host: ServerThread) -> None:
    client = openai.OpenAI(base_url=f"{host.url}/v1", api_key=TOKEN, max_retries=0, timeout=600)
    where, used = ask(client, "Where is the Eiffel Tower?")
    assert "Paris" in where and used == []

    with httpx.Client(base_url=host.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=1800) as http:
        capabilities = http.get("/v1/capabilities").json()
        assert capabilities["weight_edits"] and "serac" in capabilities["methods"]
        assert http.get("/v1/info").json()["problems"] == []
        created = http.post("/v1/edits", json={"text": EIFFEL, "method": "serac", "audit": "off"})
        assert created.status_code == 201, created.text
        edit = created.json()
        assert (edit["subject"], edit["target"], edit["status"]) == ("Eiffel Tower", "Rome", "active")

        where, used = ask(client, "Where is the Eiffel Tower?")
        assert "Rome" in where and used == [edit["id"]]
        streamed = client.chat.completions.create(
            model="kbchat", messages=[{"role": "user", "content": "Where is the Eiffel Tower?"}],
            max_tokens=MAX_TOKENS, stream=True)
        assert "Rome" in "".join(c.choices[0].delta.content or "" for c in streamed)
        capital, used = ask(client, "What is the capital of France?")
        assert "Paris" in capital and used == []
        assert http.get("/v1/health").json()["active_memory_edits"] == 1

        reverted = http.post(f"/v1/edits/{edit['id']}/revert")
        assert reverted.status_code == 200 and reverted.json()["status"] == "reverted"
    where, used = ask(client, "Where is the Eiffel Tower?")
    assert "Paris" in where and used == []


def test_chats_in_flight_during_a_weight_edit(host: ServerThread) -> None:
    """Every chat completes while ROME rewrites the weights; each answer is the one from before the edit
    or the one from after it (greedy decoding is deterministic), never something in between."""
    client = openai.OpenAI(base_url=f"{host.url}/v1", api_key=TOKEN, max_retries=0, timeout=600)
    louvre = "Where is the Louvre?"
    before, _ = ask(client, louvre)
    edit_span: list[float] = []
    outcome: dict[str, object] = {}

    def edit() -> None:
        edit_span.append(time.monotonic())
        outcome["response"] = httpx.post(
            f"{host.url}/v1/edits", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=1800,
            json={"text": "Louvre → The Louvre is located in London", "method": "rome", "audit": "off"})
        edit_span.append(time.monotonic())

    answers: list[tuple[float, float, str]] = []
    failures: list[BaseException] = []

    def chat(stream: bool) -> None:
        for _ in range(12):  # bounded; stops once the edit is over
            started = time.monotonic()
            try:
                if stream:
                    chunks = client.chat.completions.create(
                        model="kbchat", messages=[{"role": "user", "content": louvre}], max_tokens=MAX_TOKENS,
                        stream=True)
                    text = "".join(c.choices[0].delta.content or "" for c in chunks).strip()
                else:
                    text = ask(client, louvre)[0]
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(exc)
                return
            answers.append((started, time.monotonic(), text))
            if len(edit_span) == 2:
                return

    chats = [threading.Thread(target=chat, args=(i % 2 == 1,)) for i in range(4)]
    for t in chats:
        t.start()
    time.sleep(0.5)  # the chats are generating when the edit arrives
    editor = threading.Thread(target=edit)
    editor.start()
    editor.join(1800)
    for t in chats:
        t.join(600)

    assert not failures, failures
    response = outcome["response"]
    assert isinstance(response, httpx.Response) and response.status_code == 201, response
    after, _ = ask(client, louvre)
    start, end = edit_span
    overlapping = [a for a in answers if a[0] < end and a[1] > start]
    assert overlapping, "no chat was in flight during the edit"
    assert all(text for _, _, text in answers)
    assert {text for _, _, text in answers} <= {before.strip(), after.strip()}, (before, after, answers)


@pytest.mark.anyio
async def test_tui_story_against_the_host(host: ServerThread, real_service) -> None:
    from kbchat.tui.dialogs import ConfirmScreen
    from kbchat.tui.messages import EditCard
    from tests.test_tui import RecordingApp, answers, messages, submit, wait_for

    app = RecordingApp(lambda progress: RemoteChat.connect(host.url, TOKEN, progress=progress))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: "active edit" in app.sub_title, timeout=60)
        assert "SmolLM2" in app.sub_title
        await submit(pilot, "Where is the Eiffel Tower?")
        await wait_for(pilot, lambda: app.busy is None and not app.chat.answering, timeout=300)
        assert "Paris" in answers(app)[0].text
        await submit(pilot, f"/edit {EIFFEL} --method serac")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), timeout=120)
        await pilot.press("y")
        await wait_for(pilot, lambda: app.query(EditCard) or messages(app, "error"), timeout=1800)
        assert not messages(app, "error")
        card = app.query_one(EditCard)
        assert card.record.method == "serac" and card.record.target == "Rome"
        await submit(pilot, "Where is the Eiffel Tower?")
        await wait_for(pilot, lambda: len(answers(app)) == 2 and app.busy is None and not app.chat.answering,
                       timeout=300)
        assert "Rome" in answers(app)[1].text
        assert f"memory: edit #{card.record.id}" in str(answers(app)[1].meta.content)
    assert real_service.get_edit(card.record.id).status == "active"
    # The host audits the edit in a background thread; let it finish before the model is closed.
    real_service.wait_for_audits()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
