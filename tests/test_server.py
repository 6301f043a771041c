"""The HTTP host against a scripted FakeChatService: auth, the OpenAI chat endpoint (through the `openai`
client on a real loopback socket), the edit API, bad input, RemoteChat as a ChatService, the TUI as a
remote client, and the OpenAI-compatible backend against a fake engine started inside the test.
"""

from __future__ import annotations

import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from kbchat import errors
from kbchat.errors import EditNotFound, KbchatError, ParseError, UnsupportedOperation
from kbchat.remote import RemoteChat, base_url
from kbchat.server import ServerThread, create_app, resolve_token, serve
from kbchat.server.auth import TOKEN_FILE, is_loopback
from kbchat.service import AnswerStream, Capabilities, ChatService
from kbchat.wire import record_from_json, sse_data
from tests.fake_service import FakeChatService

TOKEN = "test-token-0123456789"
EIFFEL = "Eiffel Tower → The Eiffel Tower is located in Rome"
QUESTION = "Where is the Eiffel Tower?"


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def server(fake: FakeChatService) -> Iterator[ServerThread]:
    with ServerThread(create_app(fake, token=TOKEN, max_body_bytes=4096)) as running:
        yield running


@pytest.fixture
def http(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


@pytest.fixture
def client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0, timeout=10)


@pytest.fixture
def remote(server: ServerThread) -> Iterator[RemoteChat]:
    with RemoteChat(server.url, TOKEN, timeout=10) as chat:
        yield chat


def question(text: str = QUESTION) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# -- health, auth, docs ----------------------------------------------------------------------------------


def test_health_needs_no_token(http: httpx.Client) -> None:
    response = http.get("/v1/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["model"] == "fake-lm-135M" and body["device"] == "cpu"
    assert body["active_edits"] == 0
    assert "ledger" not in body  # paths on the host are for authenticated clients only


@pytest.mark.parametrize("headers", [{}, auth("wrong-token"), {"Authorization": TOKEN},
                                     {"Authorization": "Basic " + TOKEN}])
def test_requests_without_the_right_token_get_401(http: httpx.Client, fake: FakeChatService,
                                                   headers: dict[str, str]) -> None:
    for method, path, body in [("POST", "/v1/chat/completions", {"messages": question()}),
                               ("POST", "/v1/edits", {"text": EIFFEL}), ("GET", "/v1/edits", None),
                               ("GET", "/v1/info", None), ("POST", "/v1/edits/1/revert", None)]:
        response = http.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
        error = response.json()["error"]
        assert error["type"] == "authentication_error" and "token" in error["message"]
    assert not [c for c in fake.calls if c[0] in ("stream", "edit", "edits", "revert")]


def test_openai_client_with_a_wrong_token_raises(server: ServerThread) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="kbchat", messages=question())


def test_openapi_spec_is_served_without_auth(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    for path in ("/v1/chat/completions", "/v1/edits", "/v1/edits/{edit_id}", "/v1/edits/{edit_id}/revert",
                 "/v1/edits/commit", "/v1/parse", "/v1/health", "/v1/info", "/v1/capabilities", "/v1/models",
                 "/v1/verify"):
        assert path in spec["paths"]
    assert http.get("/docs").status_code == 200


# -- chat ---------------------------------------------------------------------------------------------


def test_chat_with_the_openai_client(client: openai.OpenAI, fake: FakeChatService) -> None:
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello."}]
    completion = client.chat.completions.create(model="anything", messages=[*history, *question()],
                                                temperature=0.7, max_tokens=50)
    assert completion.object == "chat.completion" and completion.model == "fake-lm-135M"
    assert completion.choices[0].message.content == "The Eiffel Tower is located in **Paris**, France."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model_extra["kbchat"]["used_edits"] == []
    # The last message is the question, the earlier ones the history.
    assert fake.calls[-1] == ("stream", QUESTION, tuple(history))


def test_streaming_chat_with_the_openai_client(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="kbchat", messages=question(), stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "The Eiffel Tower is located in **Paris**, France."
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].model_extra["kbchat"]["used_edits"] == []
    assert len({c.id for c in chunks}) == 1


def test_chat_uses_edits_and_reports_them_unless_memory_is_off(client: openai.OpenAI, http: httpx.Client
                                                               ) -> None:
    edit_id = http.post("/v1/edits", json={"text": EIFFEL, "method": "serac"}, headers=auth()).json()["id"]
    completion = client.chat.completions.create(model="kbchat", messages=question())
    assert "Rome" in completion.choices[0].message.content
    assert completion.model_extra["kbchat"]["used_edits"] == [edit_id]
    off = client.chat.completions.create(model="kbchat", messages=question(),
                                         extra_body={"kbchat": {"memory": False}})
    assert "Paris" in off.choices[0].message.content
    assert off.model_extra["kbchat"] == {**off.model_extra["kbchat"], "used_edits": [], "memory": False}
    streamed = list(client.chat.completions.create(model="kbchat", messages=question(), stream=True))
    assert streamed[-1].model_extra["kbchat"]["used_edits"] == [edit_id]


def test_max_tokens_limits_the_answer(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="kbchat", messages=question(), max_tokens=3)
    assert (completion.choices[0].message.content or "").strip() == "The Eiffel Tower"
    assert completion.choices[0].finish_reason == "length"


def test_chats_run_concurrently(fake: FakeChatService, client: openai.OpenAI) -> None:
    fake.piece_delay = 0.05  # 8 words: ~0.4 s per answer
    results: list[str] = []

    def one() -> None:
        answer = client.chat.completions.create(model="kbchat", messages=question())
        results.append(answer.choices[0].message.content or "")

    started = time.perf_counter()
    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    assert len(results) == 6 and all("Paris" in r for r in results)
    assert elapsed < 6 * 0.4 * 0.6, f"6 answers took {elapsed:.2f} s: they ran one after another"


def test_health_and_listing_answer_while_edits_and_chats_are_busy(fake: FakeChatService,
                                                                  http: httpx.Client) -> None:
    # An edit takes ~2 s and an answer ~2 s; more chats than answer threads, so some queue. A read
    # sharing a pool with either would wait about that long.
    fake.edit_delay, fake.piece_delay = 0.7, 0.25
    busy = [threading.Thread(target=http.post, args=("/v1/edits",),
                             kwargs={"json": {"text": EIFFEL}, "headers": auth()}) for _ in range(2)]
    busy += [threading.Thread(target=http.post, args=("/v1/chat/completions",),
                              kwargs={"json": {"messages": question()}, "headers": auth()}) for _ in range(17)]
    for t in busy:
        t.start()
    time.sleep(0.1)
    started = time.perf_counter()
    assert http.get("/v1/health").status_code == 200
    assert http.get("/v1/edits", headers=auth()).status_code == 200
    assert time.perf_counter() - started < 1.0
    for t in busy:
        t.join()


class RecordingFake(FakeChatService):
    """A fake that keeps the cancel event of each stream it hands out."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cancels: list[threading.Event] = []

    def stream(self, text, *, history=(), memory=True, max_new_tokens=None, cancel=None) -> AnswerStream:
        stream = super().stream(text, history=history, memory=memory, max_new_tokens=max_new_tokens,
                                cancel=cancel)
        self.cancels.append(stream.cancel)
        return stream


def test_client_disconnect_cancels_generation() -> None:
    fake = RecordingFake(piece_delay=0.2, default_answer="word " * 100)
    with ServerThread(create_app(fake, token=None)) as running, RemoteChat(running.url) as remote:
        stream = remote.stream("Tell me something long")
        pieces = iter(stream)
        assert next(pieces) == "word "
        stream.cancel.set()
        list(pieces)  # the stream ends at once and hangs up
        assert stream.answer is not None and stream.answer.text == "word"
        deadline = time.monotonic() + 5
        while not fake.cancels[-1].is_set():
            assert time.monotonic() < deadline, "the host kept generating after the client hung up"
            time.sleep(0.02)


def test_chat_timeout_is_504_and_cancels() -> None:
    fake = RecordingFake(piece_delay=0.2, default_answer="word " * 100)
    app = create_app(fake, token=None, request_timeout=0.5)
    with ServerThread(app) as running:
        response = httpx.post(f"{running.url}/v1/chat/completions", json={"messages": question("Long?")})
        assert response.status_code == 504
        assert response.json()["error"]["type"] == "timeout"
        assert fake.cancels[-1].wait(2)
        # Streaming: the answer started in time, so the timeout arrives as an error event.
        with httpx.stream("POST", f"{running.url}/v1/chat/completions",
                          json={"messages": question("Long?"), "stream": True}) as streamed:
            assert streamed.status_code == 200
            events = list(sse_data(streamed.iter_lines()))
        assert '"timeout"' in events[-2] and events[-1] == "[DONE]"


def test_service_errors_become_http_errors(fake: FakeChatService, http: httpx.Client,
                                           client: openai.OpenAI) -> None:
    response = http.post("/v1/chat/completions", json={"messages": question("   ")}, headers=auth())
    assert response.status_code == 400 and "empty" in response.json()["error"]["message"]
    fake.fail["stream"] = KbchatError("the model is asleep")
    with pytest.raises(openai.BadRequestError, match="the model is asleep"):
        client.chat.completions.create(model="kbchat", messages=question(), stream=True)


def test_bad_chat_requests(http: httpx.Client) -> None:
    def post(body: object) -> httpx.Response:
        return http.post("/v1/chat/completions", json=body, headers=auth())

    cases = [
        ({"messages": []}, 422, "messages"),
        ({"messages": [{"role": "assistant", "content": "Hi"}]}, 400, "last message"),
        ({"messages": [{"role": "tool", "content": "x"}]}, 422, "role"),
        ({"messages": question(), "n": 2}, 400, "n must be 1"),
        ({"messages": question(), "max_tokens": 100000}, 400, "max_tokens"),
        ({"messages": question(), "kbchat": {"memroy": False}}, 422, "memroy"),
        ([1, 2], 400, "JSON object"),
    ]
    for body, status, words in cases:
        response = post(body)
        assert response.status_code == status, body
        assert words in response.json()["error"]["message"], body


# -- the edit API ---------------------------------------------------------------------------------------


def test_edit_create_list_get_revert_commit(http: httpx.Client) -> None:
    created = http.post("/v1/edits", json={"text": EIFFEL, "method": "serac"}, headers=auth())
    assert created.status_code == 201
    edit = created.json()
    assert edit["id"] == 1 and edit["subject"] == "Eiffel Tower" and edit["target"] == "Rome"
    assert edit["status"] == "active" and edit["method"] == "serac"
    assert record_from_json(edit).to_json() == edit
    http.post("/v1/edits", json={"text": "Louvre → The Louvre is in London", "method": "rome"}, headers=auth())
    listed = http.get("/v1/edits", headers=auth()).json()
    assert listed["object"] == "list" and [e["id"] for e in listed["data"]] == [1, 2]
    detail = http.get("/v1/edits/1", headers=auth()).json()
    assert {c["metric"] for c in detail["checks"]} == {"reliability", "generalization", "locality"}
    reverted = http.post("/v1/edits/2/revert", headers=auth())
    assert reverted.status_code == 200 and reverted.json()["status"] == "reverted"
    assert [e["id"] for e in http.get("/v1/edits?status=reverted", headers=auth()).json()["data"]] == [2]
    committed = http.post("/v1/edits/commit", headers=auth())
    assert committed.status_code == 200
    # The new weight edit first, then the memory edits it retired; reverted #2 is not carried.
    new, *retired = committed.json()["data"]
    assert (new["id"], new["kind"], new["status"]) == (3, "weight", "active")
    assert [(e["id"], e["status"]) for e in retired] == [(1, "committed")]
    assert http.get("/v1/health").json()["active_edits"] == 1
    nothing = http.post("/v1/edits/commit", headers=auth())  # no active memory edits left
    assert nothing.status_code == 400
    assert nothing.json()["error"] == {**nothing.json()["error"], "code": "kbchat_error",
                                       "message": "no active memory edits to commit"}


def test_edit_progress_streams_then_the_edit(http: httpx.Client, fake: FakeChatService) -> None:
    fake.edit_delay = 0.05
    with http.stream("POST", "/v1/edits", json={"text": EIFFEL, "stream": True}, headers=auth()) as response:
        assert response.status_code == 200
        events = list(sse_data(response.iter_lines()))
    assert events[-1] == "[DONE]"
    assert '"progress"' in events[0] and '"optimise"' in events[1]
    assert '"edit"' in events[-2] and '"Rome"' in events[-2]


def test_parse(http: httpx.Client) -> None:
    parsed = http.post("/v1/parse", json={"text": EIFFEL}, headers=auth()).json()
    assert parsed["subject"] == "Eiffel Tower" and parsed["target"] == "Rome"
    assert parsed["relation"] == "The {} is located in"


def test_edit_api_errors(http: httpx.Client) -> None:
    cases = [
        (http.get("/v1/edits/99", headers=auth()), 404, "edit_not_found", "#99"),
        (http.post("/v1/edits/99/revert", headers=auth()), 404, "edit_not_found", "#99"),
        (http.post("/v1/edits", json={"text": EIFFEL, "method": "magic"}, headers=auth()), 400,
         "unknown_method", "unknown method 'magic'"),
        (http.post("/v1/edits", json={"text": "no arrow here"}, headers=auth()), 422, "parse_error", "SUBJECT"),
        (http.post("/v1/parse", json={"text": "no arrow here"}, headers=auth()), 422, "parse_error", "SUBJECT"),
        (http.get("/v1/edits?status=sleeping", headers=auth()), 400, "bad_request", "unknown status"),
        (http.get("/v1/edits/abc", headers=auth()), 422, "invalid_request", "edit_id"),
    ]
    for response, status, code, words in cases:
        assert response.status_code == status, response.request.url
        error = response.json()["error"]
        assert error["code"] == code and words in error["message"], error


class MemoryOnlyFake(FakeChatService):
    """A service that says it makes memory edits only, honours no hyperparameters and found problems on
    open; its `edit` records the options it was given."""

    CAPABILITIES = Capabilities(methods=("serac", "ike"), default_method="serac", weight_edits=False,
                                export=False, hparams=False, audit=False)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.options: list[dict] = []

    def capabilities(self) -> Capabilities:
        return self.CAPABILITIES

    def problems(self) -> list[str]:
        return ["edit #7: its delta file is missing"]

    def edit(self, text, *, hparams=None, audit="background", **kwargs):
        self.options.append({"hparams": hparams, "audit": audit})
        return super().edit(text, hparams=hparams, audit=audit, **kwargs)


class OptionsFake(MemoryOnlyFake):
    """The same, recording options, but with the full fake's capabilities."""

    def capabilities(self) -> Capabilities:
        return FakeChatService.capabilities(self)


def test_capabilities_route_and_remote_capabilities(http: httpx.Client, remote: RemoteChat,
                                                    fake: FakeChatService) -> None:
    response = http.get("/v1/capabilities", headers=auth())
    assert response.status_code == 200 and response.json() == fake.capabilities().to_json()
    assert http.get("/v1/capabilities").status_code == 401
    # The client reports the host's capabilities, except export: that runs where the weights are.
    assert remote.capabilities() == Capabilities.from_json({**response.json(), "export": False})
    assert fake.capabilities().export


def test_the_host_refuses_what_the_service_says_it_cannot_do() -> None:
    fake = MemoryOnlyFake()
    with ServerThread(create_app(fake, token=None)) as running, httpx.Client(base_url=running.url) as http:
        assert http.get("/v1/capabilities").json() == MemoryOnlyFake.CAPABILITIES.to_json()
        with_hparams = http.post("/v1/edits", json={"text": EIFFEL, "hparams": {"lr": 0.5}})
        assert with_hparams.status_code == 400
        assert with_hparams.json()["error"]["code"] == "bad_request"
        assert "hparams" in with_hparams.json()["error"]["message"]
        weights = http.post("/v1/edits", json={"text": EIFFEL, "method": "rome"})
        assert weights.status_code == 409 and weights.json()["error"]["code"] == "unsupported_operation"
        assert "serac, ike" in weights.json()["error"]["message"]
        assert "kbchat export" in weights.json()["error"]["message"]
        unknown = http.post("/v1/edits", json={"text": EIFFEL, "method": "magic"})
        assert unknown.status_code == 400 and "choose one of: serac, ike" in unknown.json()["error"]["message"]
        assert fake.options == []  # nothing refused reached the service
        assert http.post("/v1/edits", json={"text": EIFFEL, "method": "ike"}).status_code == 201
        assert http.get("/v1/info").json()["problems"] == ["edit #7: its delta file is missing"]
        with RemoteChat.connect(running.url) as remote:
            assert remote.problems() == ["edit #7: its delta file is missing"]
            assert remote.capabilities() == MemoryOnlyFake.CAPABILITIES
            with pytest.raises(KbchatError, match="hyperparameter"):
                remote.edit(EIFFEL, hparams={"lr": 0.5})
            with pytest.raises(UnsupportedOperation, match="does not make memit edits"):
                remote.edit(EIFFEL, method="memit", progress=lambda p: None)


def test_hparams_and_audit_reach_the_service() -> None:
    fake = OptionsFake()
    with ServerThread(create_app(fake, token=None)) as running, RemoteChat(running.url) as remote:
        remote.edit(EIFFEL, method="rome", hparams={"layer": 5, "lr": 0.5}, audit="wait")
        remote.edit("Louvre → The Louvre is in London", progress=lambda p: None, audit="off")
        remote.edit("Colosseum → The Colosseum is in Athens")
        refused = httpx.post(f"{running.url}/v1/edits", json={"text": EIFFEL, "audit": "later"})
        assert refused.status_code == 422 and "audit" in refused.json()["error"]["message"]
    assert fake.options == [{"hparams": {"layer": 5, "lr": 0.5}, "audit": "wait"},
                            {"hparams": None, "audit": "off"}, {"hparams": None, "audit": "background"}]


class QuotaExceeded(KbchatError):
    """An error class the server and the client have never been told about."""

    code = "quota_exceeded"
    http_status = 429


@pytest.mark.parametrize("cls", [KbchatError, errors.ParseError, errors.EditNotFound, errors.EditFailed,
                                 errors.LedgerError, errors.ModelLoadError, errors.IntegrityError,
                                 errors.UnsupportedOperation, QuotaExceeded])
def test_an_error_class_round_trips_through_the_host(cls: type[KbchatError], fake: FakeChatService,
                                                     http: httpx.Client, remote: RemoteChat) -> None:
    fake.fail["get_edit"] = cls("something went wrong on the host")
    fake.fail["commit"] = cls("something went wrong while committing")
    response = http.get("/v1/edits/1", headers=auth())
    assert response.status_code == cls.http_status
    assert response.json()["error"]["code"] == cls.code
    with pytest.raises(cls, match="something went wrong on the host") as raised:
        remote.get_edit(1)
    assert type(raised.value) is cls
    with pytest.raises(cls, match="while committing") as raised:  # as an error event of a stream
        remote.commit(progress=lambda p: None)
    assert type(raised.value) is cls


def test_verify_route(http: httpx.Client, fake: FakeChatService) -> None:
    assert http.get("/v1/verify", headers=auth()).json() == {"ok": True, "problems": []}
    fake.fail["verify"] = errors.IntegrityError("edit #3: the weights do not match")
    response = http.get("/v1/verify", headers=auth())
    assert response.status_code == 400 and response.json()["error"]["code"] == "integrity_error"


def test_malformed_json(http: httpx.Client) -> None:
    for path in ("/v1/edits", "/v1/chat/completions", "/v1/parse"):
        response = http.post(path, content=b'{"text": "Eiffel', headers={**auth(), "Content-Type": "application/json"})
        assert response.status_code == 400
        assert response.json()["error"]["message"].startswith("malformed JSON body")


def test_oversized_bodies_get_413(http: httpx.Client, fake: FakeChatService) -> None:
    big = {"text": EIFFEL + " " * 5000}  # the fixture's limit is 4096 bytes
    response = http.post("/v1/edits", json=big, headers=auth())
    assert response.status_code == 413 and "4096" in response.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: only reading finds out
        yield b'{"text": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = http.post("/v1/edits", content=chunks(), headers={**auth(), "Content-Type": "application/json"})
    assert response.status_code == 413
    assert not [c for c in fake.calls if c[0] == "edit"]
    # Just under the limit is fine.
    assert http.post("/v1/parse", json={"text": EIFFEL}, headers=auth()).status_code == 200


# -- tokens and serve ---------------------------------------------------------------------------------


def test_no_auth_only_on_loopback(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "::", "192.168.1.20", "gpu-box.example.org"):
        with pytest.raises(KbchatError, match="loopback"):
            resolve_token(tmp_path, None, True, host)
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert resolve_token(tmp_path, None, True, host) is None
    assert not (tmp_path / TOKEN_FILE).exists()
    assert is_loopback("[::1]") and not is_loopback("")


def test_serve_refuses_no_auth_on_a_public_address_before_opening_anything(tmp_path: Path) -> None:
    opened: list[bool] = []

    def open_service(progress) -> ChatService:
        opened.append(True)
        return FakeChatService()

    with pytest.raises(KbchatError, match="loopback"):
        serve(open_service, host="0.0.0.0", port=0, no_auth=True, home=tmp_path)
    assert opened == []


def test_token_file_is_created_0600_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KBCHAT_TOKEN", raising=False)
    first = resolve_token(tmp_path, None, False, "0.0.0.0")
    path = tmp_path / TOKEN_FILE
    assert first and len(first) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert resolve_token(tmp_path, None, False, "127.0.0.1") == first
    # --token and $KBCHAT_TOKEN win over the file.
    assert resolve_token(tmp_path, "given", False, "0.0.0.0") == "given"
    monkeypatch.setenv("KBCHAT_TOKEN", "from-env")
    assert resolve_token(tmp_path, None, False, "0.0.0.0") == "from-env"
    monkeypatch.delenv("KBCHAT_TOKEN")
    with pytest.raises(KbchatError, match="contradict"):
        resolve_token(tmp_path, "given", True, "127.0.0.1")
    with pytest.raises(KbchatError, match="without spaces"):
        resolve_token(tmp_path, "two words", False, "127.0.0.1")
    path.chmod(0o644)
    with pytest.raises(KbchatError, match="chmod 600"):
        resolve_token(tmp_path, None, False, "127.0.0.1")


# -- RemoteChat -----------------------------------------------------------------------------------------


def test_remote_chat_is_a_chat_service(remote: RemoteChat, fake: FakeChatService) -> None:
    assert isinstance(remote, ChatService)
    info = remote.info()
    assert (info.model, info.ledger, info.active_edits) == ("fake-lm-135M", fake.ledger, 0)
    answer = remote.ask(QUESTION, history=[{"role": "user", "content": "Hi"}])
    assert answer.text == "The Eiffel Tower is located in **Paris**, France." and answer.tokens == 8
    assert fake.calls[-1] == ("stream", QUESTION, ({"role": "user", "content": "Hi"},))
    parsed = remote.parse(EIFFEL)
    assert parsed == fake.parse(EIFFEL)

    events = []
    record = remote.edit(EIFFEL, method="serac", progress=events.append)
    assert record == fake.get_edit(record.id)  # every field, checks and datetimes included
    assert [e.stage for e in events] == ["prepare", "optimise", "optimise", "optimise", "check"]
    assert remote.edit("Louvre → The Louvre is in London", method="rome").method == "rome"

    stream = remote.stream(QUESTION)
    assert isinstance(stream, AnswerStream)
    assert "".join(stream) == "The Eiffel Tower is located in Rome."
    assert stream.answer is not None and stream.answer.used_edits == (record.id,)
    assert remote.ask(QUESTION, memory=False).used_edits == ()
    assert remote.ask(QUESTION, max_new_tokens=2).text == "The Eiffel"

    assert [r.id for r in remote.edits()] == [1, 2]
    assert remote.get_edit(1).checks == fake.get_edit(1).checks
    assert remote.revert(2).status == "reverted"
    assert [r.id for r in remote.edits(status="active")] == [1]
    committed = remote.commit(progress=events.append)
    assert [(r.id, r.kind, r.status) for r in committed] == [(3, "weight", "active"), (1, "memory", "committed")]
    assert committed == [fake.get_edit(3), fake.get_edit(1)]
    assert events[-1].stage == "commit"
    assert remote.info().active_edits == 1
    assert remote.verify() == [] and ("verify",) in fake.calls
    assert remote.problems() == []
    with pytest.raises(UnsupportedOperation, match="kbchat export"):
        remote.export("out")


def test_remote_chat_raises_the_hosts_errors(remote: RemoteChat, fake: FakeChatService) -> None:
    with pytest.raises(EditNotFound, match="no edit #42"):
        remote.get_edit(42)
    with pytest.raises(EditNotFound):
        remote.revert(42)
    with pytest.raises(ParseError, match="SUBJECT → FACT"):
        remote.parse("no arrow")
    with pytest.raises(ParseError):
        remote.edit("no arrow", progress=lambda p: None)
    with pytest.raises(KbchatError, match="unknown method"):
        remote.edit(EIFFEL, method="magic")
    fake.fail["commit"] = UnsupportedOperation("commit needs the weights")
    with pytest.raises(UnsupportedOperation, match="commit needs the weights"):
        remote.commit()
    fake.fail["stream"] = KbchatError("out of memory")
    with pytest.raises(KbchatError, match="out of memory"):
        remote.stream(QUESTION)


def test_remote_chat_connect_checks_the_token_and_the_address(server: ServerThread, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KBCHAT_TOKEN", raising=False)
    with pytest.raises(KbchatError, match="wrong bearer token"):
        RemoteChat.connect(server.url, "wrong", home=tmp_path)
    with pytest.raises(KbchatError, match="missing bearer token"):
        RemoteChat.connect(server.url, home=tmp_path)
    monkeypatch.setenv("KBCHAT_TOKEN", TOKEN)
    with RemoteChat.connect(server.url + "/v1/", home=tmp_path) as chat:
        assert chat.info().model == "fake-lm-135M"
    monkeypatch.delenv("KBCHAT_TOKEN")
    (tmp_path / TOKEN_FILE).write_text(TOKEN + "\n")  # a host on this machine with the same data dir
    with RemoteChat.connect(server.url, home=tmp_path) as chat:
        assert chat.edits() == []
    with pytest.raises(KbchatError, match="cannot reach the kbchat host"):
        RemoteChat.connect("http://127.0.0.1:9", TOKEN)  # discard port: nothing listens
    assert base_url("gpu-box:8000") == "http://gpu-box:8000/v1"


# -- the TUI against a host -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_tui_against_a_remote_host(server: ServerThread, fake: FakeChatService) -> None:
    from kbchat.tui import KbchatApp
    from kbchat.tui.dialogs import ConfirmScreen
    from kbchat.tui.messages import EditCard, EditProgress
    from tests.test_tui import answers, idle, opened, submit, wait_for

    fake.edit_delay = 1.0  # the progress widget lives ~3 s: long enough to be seen on a loaded machine
    app = KbchatApp(lambda progress: RemoteChat.connect(server.url, TOKEN, progress=progress))
    async with app.run_test() as pilot:
        await opened(pilot)
        assert app.sub_title.startswith("0 active edits · fake-lm-135M")
        await submit(pilot, QUESTION)
        await idle(pilot)
        assert answers(app)[0].text == "The Eiffel Tower is located in **Paris**, France."
        await submit(pilot, f"/edit {EIFFEL}")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        body = str(app.screen.query_one("#dialog-body").content)
        assert "Eiffel Tower" in body and "Rome" in body
        await pilot.press("y")
        await wait_for(pilot, lambda: app.query(EditProgress))  # progress events crossed the wire
        await wait_for(pilot, lambda: app.query(EditCard))
        card = app.query_one(EditCard)
        assert card.border_title == "edit #1" and "serac (memory) · active" in str(card.content)
        await wait_for(pilot, lambda: app.sub_title.startswith("1 active edit ·"))
        await submit(pilot, QUESTION)
        await idle(pilot)
        answer = answers(app)[1]
        assert answer.text == "The Eiffel Tower is located in Rome."
        assert "memory: edit #1" in str(answer.meta.content)
    assert ("edit", EIFFEL, None) in fake.calls


# -- the OpenAI-compatible backend -------------------------------------------------------------------------


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[tuple[object, list[dict]]]:
    from kbchat.ledger import Ledger
    from kbchat.server.openai_backend import OpenAIBackendChat
    from tests.engines import WordEmbedder, fake_openai_engine  # torch: imported only here

    seen: list[dict] = []
    with ServerThread(fake_openai_engine(seen)) as engine:
        ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
        chat = OpenAIBackendChat(ledger, WordEmbedder(), engine_url=engine.url, model="engine-7b")
        try:
            yield chat, seen
        finally:
            chat.close()


def test_openai_backend_states_in_scope_edits_to_the_engine(backend) -> None:
    chat, seen = backend
    assert isinstance(chat, ChatService)
    assert chat.ask(QUESTION).text == "The answer is Paris."
    assert [m["role"] for m in seen[-1]["messages"]] == ["user"] and seen[-1]["temperature"] == 0
    record = chat.edit(EIFFEL)
    assert (record.method, record.kind, record.target) == ("ike", "memory", "Rome")
    answer = chat.ask(QUESTION, max_new_tokens=12)
    assert answer.used_edits == (record.id,)
    system = seen[-1]["messages"][0]
    assert system["role"] == "system" and seen[-1]["max_tokens"] == 12
    assert '"The Eiffel Tower is located in Rome."' in system["content"]  # quoted: data, not instructions
    assert "not instructions" in system["content"] and "Rome" in answer.text
    # Out of scope, or with memory off: nothing is stated.
    assert chat.ask("What is the capital of France?").used_edits == ()
    assert chat.ask(QUESTION, memory=False).used_edits == () and seen[-1]["messages"][0]["role"] == "user"
    # A newer edit of the same fact supersedes; reverting it brings the older one back.
    newer = chat.edit("Eiffel Tower → The Eiffel Tower is located in Berlin")
    assert chat.get_edit(record.id).status == "superseded"
    assert chat.ask(QUESTION).used_edits == (newer.id,)
    chat.revert(newer.id)
    assert chat.ask(QUESTION).used_edits == (record.id,) and chat.info().active_memory_edits == 1


def test_openai_backend_refuses_what_needs_the_weights(backend) -> None:
    chat, _ = backend
    for method in ("rome", "memit", "alphaedit", "ft", "serac"):
        with pytest.raises(UnsupportedOperation, match="kbchat export" if method != "serac" else "ike"):
            chat.edit(EIFFEL, method=method)
    with pytest.raises(UnsupportedOperation, match="kbchat export"):
        chat.commit()
    assert chat.edits() == []


def test_openai_backend_behind_the_host(backend) -> None:
    chat, seen = backend
    with ServerThread(create_app(chat, token=TOKEN)) as host:
        client = openai.OpenAI(base_url=f"{host.url}/v1", api_key=TOKEN, max_retries=0)
        with httpx.Client(base_url=host.url, headers=auth()) as http:
            refused = http.post("/v1/edits", json={"text": EIFFEL, "method": "rome"})
            assert refused.status_code == 409 and "kbchat export" in refused.json()["error"]["message"]
            assert http.post("/v1/edits", json={"text": EIFFEL}).status_code == 201
        streamed = client.chat.completions.create(model="engine-7b", messages=question(), stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in streamed)
        assert "located in Rome" in text
        assert host.url and seen[-1]["stream"] is True
        with RemoteChat(host.url, TOKEN) as remote, pytest.raises(UnsupportedOperation):
            remote.commit()


def test_openai_backend_asks_the_engine_for_its_model() -> None:
    from kbchat.server.openai_backend import _first_model
    from tests.engines import fake_openai_engine

    with ServerThread(fake_openai_engine([])) as engine:
        assert _first_model(f"{engine.url}/v1", "key", None) == "engine-7b"
    with pytest.raises(KbchatError, match="cannot list the models"):
        _first_model("http://127.0.0.1:9/v1", None, None)
