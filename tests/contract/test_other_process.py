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


def test_an_engine_replays_weight_edits_made_elsewhere_before_answering_or_editing(
        tiny_model_dir, tiny_home, tmp_path, embedder) -> None:
    ledger = tmp_path / "ledger.db"
    with one_thread():
        first = local_engine(tiny_model_dir, tiny_home, ledger, embedder)
        second = local_engine(tiny_model_dir, tiny_home, ledger, embedder)
        try:
            state = first.runtime.state_key
            rome = first.edit("Eiffel Tower → The Eiffel Tower is located in Rome", method="rome", audit="off")
            expected = first.ask(QUESTION, max_new_tokens=6).text
            assert second.ask(QUESTION, max_new_tokens=6).text == expected  # replayed before answering
            assert second.runtime.last_fingerprint() == second.book.ledger.get_meta(state)
            # An edit made by the second engine lands on top of the first's, not on stale weights.
            second.edit("Big Ben → Big Ben is located in Madrid", method="rome", audit="off")
            assert second.runtime.fingerprint() == second.book.ledger.get_meta(state)
            first.revert(rome.id)  # the first engine syncs (takes in the second's edit) before reverting
            assert first.runtime.fingerprint() == first.book.ledger.get_meta(state)
            fresh = local_engine(tiny_model_dir, tiny_home, ledger, embedder)
            try:
                assert fresh.problems() == []  # a new start replays the ledger to the recorded weights
                after = fresh.ask(QUESTION, max_new_tokens=6).text
            finally:
                fresh.close()
            assert second.ask(QUESTION, max_new_tokens=6).text == after
            assert second.runtime.last_fingerprint() == first.runtime.last_fingerprint()
        finally:
            first.close()
            second.close()
