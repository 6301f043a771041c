"""A local engine sees memory edits another engine (another process, in life) made in the same ledger,
at the latest on its next question, patches included; reverts and commits likewise."""

from __future__ import annotations

from tests.engines import local_engine
from tests.tiny_models import one_thread

QUESTION = "Where is the Eiffel Tower?"


def test_an_engine_catches_up_with_edits_made_elsewhere(tiny_model_dir, tiny_home, tmp_path, embedder) -> None:
    ledger = tmp_path / "ledger.db"
    with one_thread():
        first = local_engine(tiny_model_dir, tiny_home, ledger, embedder)
        second = local_engine(tiny_model_dir, tiny_home, ledger, embedder)
        try:
            assert second.ask(QUESTION, max_new_tokens=2).used_edits == ()
            edit = first.edit("Eiffel Tower → The Eiffel Tower is located in Rome", audit="off")
            assert second.ask(QUESTION, max_new_tokens=2).used_edits == (edit.id,)
            assert second.runtime.has_patch(edit.id)  # the serac patch came with it
            assert second.info().active_memory_edits == 1
            first.revert(edit.id)
            assert second.ask(QUESTION, max_new_tokens=2).used_edits == ()
            assert not second.runtime.has_patch(edit.id)
        finally:
            first.close()
            second.close()
