"""Edit metrics on tiny random models, with cases whose answers are known by construction; generation
through the one greedy decoder (`kbchat.runtime.decoding`)."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from kbchat.evaluation.metrics import (
    _encode_pair,
    generation_hit,
    keeps_fact,
    mentions,
    ngram_entropy,
    prefers_new,
    target_logprob,
    target_logprobs,
    target_scores,
    token_accuracies,
    token_accuracy,
)
from kbchat.runtime.decoding import chat_input_ids, completion_input_ids, greedy_text

WORDS = ["<pad>", "<eos>", "<unk>", "USER", "BOT", "the", "eiffel", "tower", "is", "located", "in", "paris",
         "rome", "capital", "of", "france", "where", "?", "."]
CHAT_TEMPLATE = (
    "{% for m in messages %}USER {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}BOT {% endif %}"
)
CORPUS = ["The Eiffel Tower is located in Paris.", "The capital of France is Paris.", "Rome is in Italy.",
          "Danielle Darrieux speaks French and English.", "Where is the Eiffel Tower? It is in Paris."]


@pytest.fixture
def word_tok() -> PreTrainedTokenizerFast:
    """One token per word, so token counts and ids are known by hand."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


@pytest.fixture
def bpe_tok() -> PreTrainedTokenizerFast:
    """A byte-level BPE like GPT-2's, whose pieces carry their leading space."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def tiny_gpt2(vocab_size: int, eos: int = 1) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                        bos_token_id=eos, eos_token_id=eos, pad_token_id=0)
    return GPT2LMHeadModel(config).eval()


def tiny_llama(vocab_size: int, eos: int = 1) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=eos, eos_token_id=eos, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


BUILDERS = {"gpt2": tiny_gpt2, "llama": tiny_llama}


def fixed_logits(model: nn.Module, biases: dict[int, float]) -> nn.Module:
    """Make the model's next-token logits constant: `biases` for the given ids, 0 elsewhere."""
    hidden, vocab = model.lm_head.in_features, model.lm_head.out_features
    head = nn.Linear(hidden, vocab, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        for token, value in biases.items():
            head.bias[token] = value
    model.lm_head = head
    return model


def ids(tok: PreTrainedTokenizerFast, word: str) -> int:
    return tok.convert_tokens_to_ids(word)


# ----------------------------------------------------------------------------------------------
# Teacher-forced scores


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_logprobs_match_single(bpe_tok, arch, side):
    model = BUILDERS[arch](len(bpe_tok))
    bpe_tok.padding_side = side
    pairs = [("The Eiffel Tower is located in", "Rome"), ("Rome is", "in Italy and the capital of France"),
             ("The", "capital"), ("Where is the Eiffel Tower? It is in", "Paris")]
    single = [target_logprob(model, bpe_tok, p, t) for p, t in pairs]
    batched = target_logprobs(model, bpe_tok, pairs, batch_size=3)
    assert batched == pytest.approx(single, abs=1e-4)
    assert token_accuracies(model, bpe_tok, pairs) == [token_accuracy(model, bpe_tok, p, t) for p, t in pairs]


def test_target_tokens_are_the_tail_after_the_prompt(bpe_tok):
    encoded = _encode_pair(bpe_tok, "The Eiffel Tower is located in", "Rome")
    prompt_ids = bpe_tok("The Eiffel Tower is located in")["input_ids"]
    assert encoded.ids[: encoded.start] == prompt_ids
    assert encoded.ids[encoded.start :] == bpe_tok(" Rome")["input_ids"]
    # Trailing whitespace on the prompt does not end up inside the target.
    assert _encode_pair(bpe_tok, "The Eiffel Tower is located in ", "Rome") == encoded


def test_logprob_hand_computed_with_constant_logits(word_tok):
    paris, rome = ids(word_tok, "paris"), ids(word_tok, "rome")
    model = fixed_logits(tiny_llama(len(word_tok)), {paris: 10.0})
    lse = math.log(math.exp(10.0) + len(word_tok) - 1)
    prompt = "the eiffel tower is located in"
    assert target_logprob(model, word_tok, prompt, "paris") == pytest.approx(10.0 - lse, abs=1e-5)
    assert target_logprob(model, word_tok, prompt, "paris paris") == pytest.approx(2 * (10.0 - lse), abs=1e-5)
    assert target_logprob(model, word_tok, prompt, "rome") == pytest.approx(-lse, abs=1e-5)
    assert rome != paris


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_token_accuracy_counts_argmax_hits(word_tok, arch):
    model = fixed_logits(BUILDERS[arch](len(word_tok)), {ids(word_tok, "paris"): 10.0})
    prompt = "the eiffel tower is located in"
    assert token_accuracy(model, word_tok, prompt, "paris") == 1.0
    assert token_accuracy(model, word_tok, prompt, "rome") == 0.0
    assert token_accuracy(model, word_tok, prompt, "paris rome") == 0.5
    assert token_accuracy(model, word_tok, prompt, "paris paris paris") == 1.0


def test_prefers_new_agrees_with_target_logprob(bpe_tok):
    model = tiny_gpt2(len(bpe_tok))
    prompt = "The Eiffel Tower is located in"
    for new, old in [("Rome", "Paris"), ("Paris", "Rome"), ("Italy", "France"), ("English", "French")]:
        expected = target_logprob(model, bpe_tok, prompt, new) > target_logprob(model, bpe_tok, prompt, old)
        assert prefers_new(model, bpe_tok, prompt, new, old) is expected
        assert prefers_new(model, bpe_tok, prompt, old, new) is not expected


def test_prefers_new_sum_and_mean_differ_on_length(word_tok):
    paris, rome = ids(word_tok, "paris"), ids(word_tok, "rome")
    model = fixed_logits(tiny_llama(len(word_tok)), {paris: 10.0, rome: 9.5})
    prompt = "the capital of france is"
    # Three likely tokens sum to less than one slightly less likely token, but average more.
    assert prefers_new(model, word_tok, prompt, "paris", "rome")
    assert not prefers_new(model, word_tok, prompt, "paris paris paris", "rome")
    assert prefers_new(model, word_tok, prompt, "paris paris paris", "rome", reduction="mean")
    with pytest.raises(ValueError, match="reduction"):
        prefers_new(model, word_tok, prompt, "paris", "rome", reduction="max")


def test_scoring_restores_training_mode_and_disables_dropout(bpe_tok):
    model = tiny_gpt2(len(bpe_tok)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = target_logprob(model, bpe_tok, "The Eiffel Tower is located in", "Rome")
    second = target_logprob(model, bpe_tok, "The Eiffel Tower is located in", "Rome")
    assert first == second  # dropout was off
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_pairs_are_rejected(word_tok):
    model = tiny_llama(len(word_tok))
    with pytest.raises(ValueError, match="empty target"):
        target_logprob(model, word_tok, "the tower is in", "  ")
    with pytest.raises(ValueError, match="no context"):
        target_logprob(model, word_tok, "", "paris")
    with pytest.raises(ValueError, match="batch_size"):
        target_logprobs(model, word_tok, [("the tower is in", "paris")], batch_size=0)


# ----------------------------------------------------------------------------------------------
# Generation


def greedy(model: nn.Module, tok: PreTrainedTokenizerFast, prompt: str, max_new_tokens: int, chat: bool = False) -> str:
    """What evaluation generates: a raw continuation of `prompt`, or the chat answer to it."""
    device = next(model.parameters()).device
    if chat:
        input_ids = chat_input_ids(tok, [{"role": "user", "content": prompt}], device)
    else:
        input_ids = completion_input_ids(tok, prompt, device)
    return greedy_text(model, tok, input_ids, max_new_tokens)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_greedy_text_continues_with_argmax(word_tok, arch):
    model = fixed_logits(BUILDERS[arch](len(word_tok)), {ids(word_tok, "paris"): 10.0})
    assert greedy(model, word_tok, "the tower is in", max_new_tokens=3).split() == ["paris"] * 3
    assert greedy(model, word_tok, "where is the tower ?", max_new_tokens=2, chat=True) == "paris paris"


def test_greedy_text_stops_at_eos(word_tok):
    model = fixed_logits(tiny_llama(len(word_tok)), {ids(word_tok, "<eos>"): 10.0})
    assert greedy(model, word_tok, "the tower is in", max_new_tokens=5, chat=True) == ""


def test_greedy_text_accepts_older_chat_template_return_type(word_tok, monkeypatch):
    model = fixed_logits(tiny_llama(len(word_tok)), {ids(word_tok, "rome"): 10.0})
    original = word_tok.apply_chat_template

    def old_style(messages, **kwargs):
        return original(messages, **kwargs)["input_ids"]  # a (1, T) tensor, not a BatchEncoding

    monkeypatch.setattr(word_tok, "apply_chat_template", old_style)
    assert greedy(model, word_tok, "where is the tower ?", max_new_tokens=1, chat=True) == "rome"


def test_greedy_text_cuts_at_a_stop_string(word_tok):
    model = fixed_logits(tiny_llama(len(word_tok)), {ids(word_tok, "paris"): 10.0})
    input_ids = completion_input_ids(word_tok, "the tower is in", "cpu")
    assert greedy_text(model, word_tok, input_ids, 3).split() == ["paris"] * 3
    assert greedy_text(model, word_tok, input_ids, 3, stops=(" ",)) == "paris"


@pytest.mark.parametrize(
    ("answer", "target", "hit"),
    [
        ("The Eiffel Tower is in Rome.", "Rome", True),
        ("ROME!", "rome", True),
        ("Rome's tower", "Rome", True),
        ("Romeo and Juliet", "Rome", False),
        ("It is in Québec City", "Quebec City", True),
        ("in new-york city, obviously", "New York City", True),
        ("New Jersey, York", "New York", False),
        ("It is C++.", "C++", True),
        ("", "Rome", False),
        ("Le Iene is a Canadian product.", "Canada", True),  # regular adjective and demonym forms
        ("It is a Japanese design.", "Japan", True),
        ("Sheikh Bedreddin is a Buddhist.", "Buddhism", True),
        ("The Antarctic is cold.", "Antarctica", True),
        ("She is Italian.", "Italy", True),
        ("He is French.", "France", False),  # irregular forms are not guessed
        ("Canadians", "Canada Goose", False),  # nor forms of a target of several words
        ("It is in Canadia.", "Canada", False),
    ],
)
def test_mentions(answer, target, hit):
    assert mentions(answer, target) is hit


def test_a_neighbour_keeps_its_fact_when_worded_anew():
    before = "The Louvre is located in Paris, France."
    assert keeps_fact(before, "The Louvre is a museum in Paris.", "Paris", "Rome")  # worded anew, same fact
    assert not keeps_fact(before, "The Louvre is located in Rome.", "Paris", "Rome")  # the fact is lost
    assert not keeps_fact(before, "The Louvre is in Paris, near Rome.", "Paris", "Rome")  # the edit leaks in
    assert keeps_fact("It is a museum.", "It is a big museum.", "Paris", "Rome")  # never named either
    assert not keeps_fact("It is a museum.", "It is in Paris.", "Paris", "Rome")  # names what it did not


def test_generation_hit_runs_the_generator_once():
    asked = []

    def generate(question: str) -> str:
        asked.append(question)
        return "I believe it is in Rome, Italy."

    assert generation_hit(generate, "Where is the Eiffel Tower?", "Rome") == (True, "I believe it is in Rome, Italy.")
    assert generation_hit(generate, "Where is the Eiffel Tower?", "Paris")[0] is False
    assert asked == ["Where is the Eiffel Tower?"] * 2


# ----------------------------------------------------------------------------------------------
# Fluency


def test_ngram_entropy_of_repetition_is_zero():
    assert ngram_entropy("a a a a") == 0.0


def test_ngram_entropy_hand_computed():
    # "a b c d": 3 distinct bigrams (log2 3 bits), 2 distinct trigrams (1 bit).
    expected = (2 / 3 * math.log2(3) + 4 / 3 * 1.0) / 2
    assert ngram_entropy("a b c d") == pytest.approx(expected)
    # Punctuation marks are tokens: "a, a" has tokens a , a.
    assert ngram_entropy("a, a") == pytest.approx((2 / 3 * 1.0 + 0.0) / 2)
    assert ngram_entropy(["a a a a", "a b c d"]) == pytest.approx(expected / 2)
    assert ngram_entropy("word") == 0.0


def test_ngram_entropy_ranks_varied_text_above_repetition():
    varied = "The Eiffel Tower is a wrought-iron lattice tower in Paris, named after its engineer."
    assert ngram_entropy(varied) > ngram_entropy("Paris Paris Paris Paris Paris Paris Paris")


def test_ngram_entropy_rejects_bad_arguments():
    with pytest.raises(ValueError):
        ngram_entropy([])
    with pytest.raises(ValueError):
        ngram_entropy("a b", ns=(2, 3), weights=(1.0,))


def test_target_scores_are_the_log_probabilities_and_accuracies_of_one_pass(bpe_tok) -> None:
    model, tok = tiny_llama(len(bpe_tok)), bpe_tok
    pairs = [("The Eiffel Tower is located in", "Rome"), ("Big Ben is in", "London Town"), ("x", "y")]
    with torch.no_grad():
        scores = target_scores(model, tok, pairs)
        assert [lp for lp, _ in scores] == pytest.approx(target_logprobs(model, tok, pairs), abs=1e-5)
        assert [acc for _, acc in scores] == token_accuracies(model, tok, pairs)
