"""Every implementation of the service contract, built for tests without the real model: the scripted
fake, the local engine on a tiny random Llama, the remote client against a host serving that engine,
and the OpenAI-backend host against a few-line OpenAI-compatible engine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from starlette.responses import StreamingResponse

from tests.fake_service import FakeChatService
from tests.tiny_models import tiny

IMPLEMENTATIONS = ("fake", "local", "remote", "openai")


class WordEmbedder:
    """A deterministic stand-in for the sentence embedder: hashed bag of words, unit length."""

    name = "words@test"
    dim = 64

    def embed(self, texts):
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                vectors[row, sum(word.encode()) % self.dim] += 1.0
            vectors[row] /= max(float(np.linalg.norm(vectors[row])), 1e-6)
        return vectors

    def knows(self, word):
        return word in {"ireland", "iceland", "paris"}  # a few real words: never slips of a subject


def fake_openai_engine(seen: list[dict]) -> FastAPI:
    """A few lines of OpenAI-compatible engine: its answer echoes the system message it was sent."""
    engine = FastAPI()

    @engine.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "engine-7b", "object": "model"}]}

    @engine.post("/v1/chat/completions")
    async def complete(request: Request) -> StreamingResponse:
        body = await request.json()
        seen.append(body)
        system = " ".join(m["content"] for m in body["messages"] if m["role"] == "system")
        words = (f"[system: {system}] " if system else "") + "The answer is Paris."

        def chunks() -> Iterator[str]:
            for word in words.split(" "):
                chunk = {"choices": [{"index": 0, "delta": {"content": word + " "}}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return engine


def save_tiny_llama(folder: Path) -> Path:
    """The tiny random Llama (with its chat template) as a Hugging Face folder `--model` accepts."""
    model, tokenizer = tiny("llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def local_engine(model_dir: Path, home: Path, ledger: Path, embedder, settings=None):
    """A LocalEngine on the tiny model; `home` holds the statistics (share it across tests)."""
    from kbchat.engine.local import LocalEngine
    from kbchat.ledger import Ledger
    from kbchat.runtime import ModelRuntime, load_model

    runtime = ModelRuntime(load_model(str(model_dir), home))
    return LocalEngine(Ledger.open(f"sqlite:///{ledger}"), runtime, embedder, home, settings)


@contextmanager
def implementation(name: str, model_dir: Path, home: Path, tmp: Path, embedder) -> Iterator[object]:
    """The service called `name` (one of IMPLEMENTATIONS), closed afterwards."""
    if name == "fake":
        yield FakeChatService()
        return
    from kbchat.server import ServerThread, create_app

    if name == "openai":
        from kbchat.ledger import Ledger
        from kbchat.server.openai_backend import OpenAIBackendChat

        with ServerThread(fake_openai_engine([])) as engine:
            chat = OpenAIBackendChat(Ledger.open(f"sqlite:///{tmp / 'ledger.db'}"), WordEmbedder(),
                                     engine_url=engine.url, model="engine-7b")
            try:
                yield chat
            finally:
                chat.close()
        return
    engine = local_engine(model_dir, home, tmp / "ledger.db", embedder)
    try:
        if name == "local":
            yield engine
            return
        from kbchat.remote import RemoteChat

        with ServerThread(create_app(engine, token=None)) as host, RemoteChat(host.url) as remote:
            yield remote
    finally:
        engine.close()
