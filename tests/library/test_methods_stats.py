"""StatsCache: second moments against a direct computation, memory and disk caching, damaged files."""

from __future__ import annotations

import shutil

import pytest
import torch

from methods.architecture import architecture_of
from methods.hooks import Trace
from methods.hparams import StatsHParams
from methods.stats import StatsCache, model_fingerprint
from tests.tiny_models import corpus, tiny

# 2 batches of 4 windows of 16 tokens: exactly 128 tokens, so the expected mean is easy to rebuild.
SPEC = StatsHParams(n_tokens=128, seq_len=16, batch_size=4)


def _modules(model) -> list[str]:
    arch = architecture_of(model)
    return [arch.mlp_out_name(2), arch.mlp_out_name(0)]  # not in depth order on purpose


def _expected(model, tok, modules: list[str], n_tokens: int) -> dict[str, torch.Tensor]:
    """mean x x^T over the first n_tokens of the corpus, cut into 16-token windows, from a plain Trace."""
    ids: list[int] = []
    for text in corpus():
        ids += tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= n_tokens:
            break
    rows = torch.tensor(ids[:n_tokens]).reshape(-1, 16)  # (n_tokens / 16, 16)
    with torch.no_grad(), Trace(model, modules, retain_input=True, retain_output=False) as trace:
        model(input_ids=rows)
    out = {}
    for name in modules:
        x = trace.inputs[name].reshape(n_tokens, -1).double()  # (N, in)
        out[name] = (x.T @ x / n_tokens).float()  # (in, in)
    return out


def test_second_moments_equal_a_direct_computation(family, tmp_path):
    model, tok = tiny(family)
    modules = _modules(model)
    cache = StatsCache(root=tmp_path, corpus=corpus)
    got = cache.second_moments(model, tok, modules, SPEC)
    expected = _expected(model, tok, modules, SPEC.n_tokens)
    assert list(got) == modules
    for name in modules:
        d_in = model.config.hidden_size * (2 if family == "llama" else 4)
        assert got[name].shape == (d_in, d_in)
        assert got[name].dtype == torch.float32
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got[name], got[name].T)
    assert sorted(cache.computed) == sorted(modules)


def test_memory_then_disk_cache(family, tmp_path):
    model, tok = tiny(family)
    modules = _modules(model)
    cache = StatsCache(root=tmp_path, corpus=corpus)
    first = cache.second_moments(model, tok, modules, SPEC)
    assert len(cache.computed) == 2

    again = cache.second_moments(model, tok, modules, SPEC)
    assert len(cache.computed) == 2
    assert all(again[n] is first[n] for n in modules)  # the very tensors kept in memory, not a reload

    def no_text():
        raise AssertionError("the corpus was read: statistics were recomputed")

    fresh = StatsCache(root=tmp_path, corpus=no_text)  # disk
    loaded = fresh.second_moments(model, tok, modules, SPEC)
    assert fresh.computed == []
    for name in modules:
        assert torch.equal(loaded[name], first[name])

    more = cache.second_moments(model, tok, modules, StatsHParams(n_tokens=64, seq_len=16, batch_size=4))
    assert len(cache.computed) == 4  # another sample count is another statistic
    assert not torch.equal(more[modules[0]], first[modules[0]])


def test_memory_only_cache_writes_nothing(tmp_path, monkeypatch):
    model, tok = tiny("gpt2")
    monkeypatch.chdir(tmp_path)
    cache = StatsCache(root=None, corpus=corpus)
    cache.second_moments(model, tok, _modules(model)[:1], SPEC)
    cache.second_moments(model, tok, _modules(model)[:1], SPEC)
    assert cache.computed == _modules(model)[:1]
    assert list(tmp_path.iterdir()) == []


def _file(cache: StatsCache, model_id: str, module: str, n: int):
    path = cache.path((model_id, module, n))
    assert path is not None and path.is_file()
    return path


@pytest.mark.parametrize("damage", ["truncate", "flip-data", "flip-header", "empty"])
def test_damaged_file_is_recomputed(family, tmp_path, damage):
    model, tok = tiny(family)
    name = _modules(model)[1]
    model_id = model_fingerprint(model)
    good = StatsCache(root=tmp_path, corpus=corpus).second_moments(model, tok, [name], SPEC)[name]
    path = _file(StatsCache(root=tmp_path), model_id, name, SPEC.n_tokens)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip-data":
        data[-5] ^= 0xFF  # inside the matrix: only the content hash can tell
    elif damage == "flip-header":
        data[12] ^= 0xFF
    else:
        data = bytearray()
    path.write_bytes(bytes(data))

    cache = StatsCache(root=tmp_path, corpus=corpus)
    again = cache.second_moments(model, tok, [name], SPEC)[name]
    assert cache.computed == [name]
    assert torch.equal(again, good)
    reloaded = StatsCache(root=tmp_path, corpus=corpus)  # the file was rewritten
    reloaded.second_moments(model, tok, [name], SPEC)
    assert reloaded.computed == []


def test_file_for_another_sample_count_is_not_used(tmp_path):
    model, tok = tiny("llama")
    name = _modules(model)[1]
    model_id = model_fingerprint(model)
    StatsCache(root=tmp_path, corpus=corpus).second_moments(model, tok, [name], SPEC)
    src = _file(StatsCache(root=tmp_path), model_id, name, SPEC.n_tokens)
    other = StatsHParams(n_tokens=64, seq_len=16, batch_size=4)
    shutil.copy(src, StatsCache(root=tmp_path).path((model_id, name, other.n_tokens)))

    cache = StatsCache(root=tmp_path, corpus=corpus)
    cache.second_moments(model, tok, [name], other)
    assert cache.computed == [name]


def test_file_for_another_model_id_is_not_used(tmp_path):
    """Files live under the first 16 hex digits of the id; the full id in the file must match too."""
    model, tok = tiny("gpt2")
    name = _modules(model)[1]
    one, two = "a" * 16 + "1" * 48, "a" * 16 + "2" * 48
    first = StatsCache(root=tmp_path, corpus=corpus)
    first.second_moments(model, tok, [name], SPEC, model_id=one)
    assert first.path((one, name, SPEC.n_tokens)) == first.path((two, name, SPEC.n_tokens))

    cache = StatsCache(root=tmp_path, corpus=corpus)
    cache.second_moments(model, tok, [name], SPEC, model_id=two)
    assert cache.computed == [name]
    cache = StatsCache(root=tmp_path, corpus=corpus)  # and now `two`'s file is there
    cache.second_moments(model, tok, [name], SPEC, model_id=two)
    assert cache.computed == []


def test_a_different_model_does_not_reuse_statistics(tmp_path):
    llama, tok = tiny("llama")
    other, _ = tiny("llama", seed=1)
    name = _modules(llama)[1]
    cache = StatsCache(root=tmp_path, corpus=corpus)
    a = cache.second_moments(llama, tok, [name], SPEC)[name]
    b = cache.second_moments(other, tok, [name], SPEC)[name]
    assert cache.computed == [name, name]
    assert not torch.equal(a, b)


def test_model_fingerprint_tracks_every_weight(family):
    model, _ = tiny(family)
    same, _ = tiny(family)
    before = model_fingerprint(model)
    assert model_fingerprint(same) == before
    assert len(before) == 64
    weight = model.get_submodule(architecture_of(model).mlp_out_name(3)).weight
    original = weight[0, 0].item()
    with torch.no_grad():
        weight[0, 0] += 1e-3
    assert model_fingerprint(model) != before
    with torch.no_grad():
        weight[0, 0] = original
    assert model_fingerprint(model) == before


def test_empty_corpus_is_an_error(tmp_path):
    model, tok = tiny("gpt2")
    cache = StatsCache(root=tmp_path, corpus=lambda: ["too short"])
    with pytest.raises(ValueError, match="no text"):
        cache.second_moments(model, tok, _modules(model)[:1], SPEC)


def test_derived_values_are_made_once_per_key():
    cache = StatsCache()
    made = []

    def make(value: float):
        made.append(value)
        return torch.full((2, 2), value)

    a = cache.derived(("p", "m1", 0.01), lambda: make(1.0))
    b = cache.derived(("p", "m1", 0.01), lambda: make(2.0))
    c = cache.derived(("p", "m1", 0.02), lambda: make(3.0))
    assert a is b and made == [1.0, 3.0]
    assert torch.equal(c, torch.full((2, 2), 3.0))
