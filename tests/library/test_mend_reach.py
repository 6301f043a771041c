"""What happens to a learned editor's update at edit time (methods.mend.reach): whitening keeps each
term's effect on its own key and shrinks its effect on common keys; the step search takes the first
step at which the target beats its rival, and the delta records it."""

from __future__ import annotations

import dataclasses

import torch

import methods
from methods.mend.batch import encode
from methods.mend.compute import capture, editor_factors
from methods.mend.reach import (
    StepSearch,
    beats_rival,
    chosen_steps,
    drift,
    narrowed,
    one_module_rows,
    ridge_inverse,
    scaled_rows,
    whitened,
)
from tests.library.test_mend import fresh_editor
from tests.tiny_models import edit_requests, tiny


def test_whitening_keeps_the_own_key_and_spares_common_keys():
    torch.manual_seed(0)
    d_in, d_out, n = 16, 8, 2000
    common = torch.randn(d_in)
    keys = torch.randn(n, 1) * common + 0.1 * torch.randn(n, d_in)  # (n, in): text's keys share one direction
    inverse = ridge_inverse(keys.T @ keys / n, 0.01)
    right = torch.stack([common + torch.randn(d_in), torch.zeros(d_in)], -1)[None]  # (1, in, 2); column 2 padding
    left = torch.randn(1, d_out, 2)
    (w_left, w_right), = whitened({"m": (left, right)}, {"m": inverse}).values()
    assert torch.equal(w_left, left)
    own = (right[0, :, 0] @ right[0, :, 0], w_right[0, :, 0] @ right[0, :, 0])
    assert torch.isclose(own[0], own[1], rtol=1e-4)  # the edit's own key is moved as before
    assert torch.equal(w_right[0, :, 1], torch.zeros(d_in))  # padding stays zero
    plain_reach = (keys @ right[0, :, 0]).abs().mean()
    white_reach = (keys @ w_right[0, :, 0]).abs().mean()
    assert white_reach < 0.5 * plain_reach  # common keys are moved far less


def test_scaled_rows_scales_each_row_left_factor():
    left, right = torch.ones(2, 3, 1), torch.ones(2, 4, 1)
    (l2, r2), = scaled_rows({"m": (left, right)}, torch.tensor([2.0, 0.5])).values()
    assert torch.equal(l2[0], 2 * left[0]) and torch.equal(l2[1], 0.5 * left[1]) and torch.equal(r2, right)


def test_the_step_search_takes_the_first_step_that_beats_the_rival(family):
    model, tok = tiny(family)
    # one row with its old answer named, one without (its target must become the top prediction)
    requests = [edit_requests(2)[0], dataclasses.replace(edit_requests(2)[1], target_true=None)]
    editor = fresh_editor(model, alpha=0.1)
    signals = capture(model, encode(tok, [(r.text, r.target) for r in requests]), editor.spec.names)
    with torch.no_grad():
        factors = editor_factors(editor, signals)
    steps = (0.0, 1.0, 10.0, 100.0, 1000.0)
    found = chosen_steps(model, tok, requests, factors, steps)
    beats = {s: beats_rival(model, tok, requests, scaled_rows(factors, torch.full((2,), s))).tolist() for s in steps}
    assert not beats[0.0][1]  # a random model does not already say row 1's target: a search is needed
    for b, step in enumerate(found.steps.tolist()):
        assert step in steps
        assert beats[step][b] or step == steps[-1]
        assert not any(beats[s][b] for s in steps if s < step)
        assert bool(found.reached[b]) == beats[step][b]  # reported, not assumed
    delta = methods.get("mend").compute(model, tok, requests, editor=editor)  # the defaults: as trained
    assert delta.meta["steps"] == [1.0, 1.0] and delta.meta["whiten"] is None
    assert delta.meta["reached"] == beats_rival(model, tok, requests, factors).tolist()


def _unnamed_edits(family: str):
    """A tiny model, two requests with no old answer named (the target must become the top prediction)
    and an untrained editor's factors for them: (model, tokenizer, requests, factors)."""
    model, tok = tiny(family)
    requests = [dataclasses.replace(r, target_true=None) for r in edit_requests(2)]
    editor = fresh_editor(model, alpha=0.1)
    signals = capture(model, encode(tok, [(r.text, r.target) for r in requests]), editor.spec.names)
    with torch.no_grad():
        return model, tok, requests, editor_factors(editor, signals)


def test_the_search_never_takes_a_step_that_drifts_too_far(family):
    """`drift` is 0 for no update and grows with the step; with `max_drift` no step above the first whose
    drift exceeds it is chosen, and a bound that every step breaks keeps the first step."""
    model, tok, requests, factors = _unnamed_edits(family)
    texts = ("The capital of France is", "Water is made of")
    steps = (0.01, 0.1, 1.0, 10.0)  # a random tiny model's drift saturates beyond these
    drifts = {s: drift(model, tok, scaled_rows(factors, torch.full((2,), s)), texts) for s in (0.0, *steps)}
    assert torch.allclose(drifts[0.0], torch.zeros(2), atol=1e-6)
    assert all(bool((drifts[a] < drifts[b]).all()) for a, b in zip(steps[:-1], steps[1:], strict=True))
    free = chosen_steps(model, tok, requests, factors, steps).steps
    bound = float(drifts[0.1].max()) * 1.01  # steps 0.01 and 0.1 allowed for both rows, 1 and 10 not
    assert bool((drifts[1.0] > bound).all())
    bounded = chosen_steps(model, tok, requests, factors, steps, bound, texts).steps
    assert all(b <= 0.1 and (b == f or f > 0.1) for b, f in zip(bounded.tolist(), free.tolist(), strict=True))
    stopped = chosen_steps(model, tok, requests, factors, steps, 0.0, texts)
    assert stopped.steps.tolist() == [0.01, 0.01]
    at_first = beats_rival(model, tok, requests, scaled_rows(factors, torch.full((2,), 0.01))).tolist()
    assert stopped.reached.tolist() == at_first  # stopped short: reached only if the first step already did


def test_compute_records_its_steps_and_leaves_the_model_alone(family):
    model, tok = tiny(family)
    fingerprint = methods.model_fingerprint(model)
    stats = methods.StatsCache()
    hp = methods.get("mend").hparams(model, whiten=0.01, steps=(1.0, 4.0))
    delta = methods.get("mend").compute(model, tok, edit_requests(1), hp, editor=fresh_editor(model), stats=stats)
    assert delta.meta["whiten"] == hp.whiten and delta.meta["steps"][0] in (1.0, 4.0)
    assert methods.model_fingerprint(model) == fingerprint
    assert stats.computed  # whitening's second moments were taken once, through the given cache
    again = methods.get("mend").compute(model, tok, edit_requests(1), hp, editor=fresh_editor(model), stats=stats)
    assert len(stats.computed) == len(set(stats.computed))
    assert all(torch.equal(a.right, b.right) for a, b in zip(delta.updates, again.updates, strict=True))


def test_one_module_rows_keep_one_modules_update_each():
    left, right = torch.arange(1.0, 3.0)[:, None, None].expand(2, 3, 1), torch.ones(2, 4, 1)  # rows 1 and 2
    factors = {"a": (left, right), "b": (2 * left, right)}
    trial, kept = one_module_rows(factors, [1])
    assert kept == ["a", "b"]
    assert torch.equal(trial["a"][0][0], left[1]) and not trial["a"][0][1].any()  # candidate (1, a): a only
    assert torch.equal(trial["b"][0][1], 2 * left[1]) and not trial["b"][0][0].any()  # candidate (1, b): b only


def test_a_narrowed_step_scales_its_module_alone():
    factors = {"a": (torch.ones(2, 3, 1), torch.ones(2, 4, 1)), "b": (torch.ones(2, 3, 1), torch.ones(2, 4, 1))}
    search = StepSearch(torch.tensor([2.0, 8.0], dtype=torch.float64), torch.tensor([True, True]), (None, "b"))
    scaled = search.scaled(factors)
    assert torch.equal(scaled["a"][0][0], 2 * torch.ones(3, 1)) and torch.equal(scaled["b"][0][0], 2 * torch.ones(3, 1))
    assert not scaled["a"][0][1].any() and torch.equal(scaled["b"][0][1], 8 * torch.ones(3, 1))


def test_requests_left_short_are_searched_again_one_module_at_a_time(family):
    """A request the first search leaves short gets the smallest step at which one module's update alone
    beats its rival; reached requests are left as they were, and a bound every step breaks narrows none."""
    model, tok, requests, factors = _unnamed_edits(family)
    assert len(factors) > 1
    short = chosen_steps(model, tok, requests, factors, (0.0,))  # step 0: no update, nothing reached
    assert not short.reached.any()
    steps = (1.0, 10.0, 100.0, 1000.0, 10000.0)
    again = narrowed(model, tok, requests, factors, short, steps, None, ())
    assert again.reached.any()  # a random model's target is reached by some module at some step
    for b in range(2):
        if not again.reached[b]:
            assert again.module[b] is None and again.steps[b] == 0.0
            continue
        module, step = again.module[b], float(again.steps[b])
        assert module in factors and step in steps
        for name in factors:  # no module reaches it at a smaller step; the one kept does at this one
            alone = {n: (left * float(n == name), right) for n, (left, right) in factors.items()}
            for s in (s for s in steps if s <= step):
                hit = bool(beats_rival(model, tok, requests, scaled_rows(alone, torch.full((2,), s)))[b])
                assert not hit or (s == step and list(factors).index(name) >= list(factors).index(module))
                assert hit or not (name == module and s == step)
    bounded = narrowed(model, tok, requests, factors, short, steps, 0.0, ("The capital of France is",))
    assert not bounded.reached.any() and set(bounded.module) == {None}
    done = chosen_steps(model, tok, requests, factors, (1e4,))  # nothing short: nothing searched again
    if bool(done.reached.all()):
        assert narrowed(model, tok, requests, factors, done, steps, None, ()) is done
