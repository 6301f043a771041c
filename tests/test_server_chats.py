"""`/v1/chats…` over HTTP on the scripted service: auth, error bodies, the answer's event stream."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from kbchat.errors import KbchatError
from kbchat.server import ServerThread, create_app
from tests.fake_service import FakeChatService
from tests.test_server import QUESTION, TOKEN, auth


@pytest.fixture
def http(fake: FakeChatService) -> Iterator[httpx.Client]:
    with ServerThread(create_app(fake, token=TOKEN)) as server, httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def events(response) -> list:
    return [json.loads(line[6:]) if line[6:] != "[DONE]" else "[DONE]"
            for line in response.text.splitlines() if line.startswith("data: ")]


def test_chats_need_the_token(http) -> None:
    assert http.get("/v1/chats").status_code == 401
    assert http.post("/v1/chats", json={}).status_code == 401


def test_a_chat_answer_streams_pieces_then_the_saved_answer(http, fake) -> None:
    made = http.post("/v1/chats", json={"title": "t"}, headers=auth())
    assert made.status_code == 201
    chat_id = made.json()["id"]
    response = http.post(f"/v1/chats/{chat_id}/messages", json={"content": QUESTION}, headers=auth())
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    got = events(response)
    assert got[-1] == "[DONE]" and "answer" in got[-2]
    pieces = "".join(e["piece"] for e in got[:-2])
    assert got[-2]["answer"]["text"] == pieces.strip() and got[-2]["answer"]["message_id"] == 2
    listed = http.get("/v1/chats", headers=auth()).json()["data"]
    assert listed[0]["messages"] == 2
    found = http.get("/v1/chats/search", params={"q": "eiffel"}, headers=auth()).json()["data"]
    assert {h["message_id"] for h in found} == {1, 2}


def test_errors_are_error_bodies_with_codes(http, fake) -> None:
    missing = http.get("/v1/chats/99", headers=auth())
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "chat_not_found"
    chat_id = http.post("/v1/chats", json={}, headers=auth()).json()["id"]
    empty = http.post(f"/v1/chats/{chat_id}/messages", json={"content": "  "}, headers=auth())
    assert empty.status_code == 400 and "empty question" in empty.json()["error"]["message"]
    extra = http.post(f"/v1/chats/{chat_id}/messages", json={"content": "x", "bogus": 1}, headers=auth())
    assert extra.status_code in (400, 422) and extra.json()["error"]["code"]
    blank = http.patch(f"/v1/chats/{chat_id}", json={"title": " "}, headers=auth())
    assert blank.status_code == 400 and blank.json()["error"]["code"] == KbchatError.code
    again = http.post(f"/v1/chats/{chat_id}/messages/12345/again", headers=auth())
    assert again.status_code == 404 and again.json()["error"]["code"] == "chat_not_found"
    assert http.delete("/v1/chats/99", headers=auth()).status_code == 404
    assert fake.chat(chat_id).messages == ()  # nothing was half-saved


def test_a_refused_answer_is_an_http_error(http, fake) -> None:
    chat_id = http.post("/v1/chats", json={}, headers=auth()).json()["id"]
    fake.fail["say"] = KbchatError("the model fell over")
    response = http.post(f"/v1/chats/{chat_id}/messages", json={"content": QUESTION}, headers=auth())
    assert response.status_code == 400 and response.json()["error"]["message"] == "the model fell over"
