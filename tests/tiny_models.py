"""Tiny random models and an offline tokenizer for the `methods/` tests (nothing is downloaded).

`tiny("llama")` / `tiny("gpt2")` give a seeded 4-layer model in eval mode and a byte-level BPE tokenizer
trained in memory on `SENTENCES`. The Llama tokenizer has a chat template (with a system prompt long
enough for the edit code's shared-prefix cache to kick in); GPT-2's has none, as the real one.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from methods.hparams import StatsHParams
from methods.requests import EditRequest

FAMILIES = ("llama", "gpt2")

# Ten distinct subjects with their true city, and the new targets the edit tests write.
FACTS = (
    ("Eiffel Tower", "Paris", "Rome"),
    ("Danielle Darrieux", "Paris", "Berlin"),
    ("Michael Jordan", "Chicago", "Madrid"),
    ("Toko Yasuda", "Tokyo", "Oslo"),
    ("Mount Fuji", "Tokyo", "Lisbon"),
    ("Louvre Museum", "Paris", "Vienna"),
    ("Barack Obama", "Chicago", "Athens"),
    ("Big Ben", "London", "Cairo"),
    ("Lionel Messi", "Barcelona", "Dublin"),
    ("Golden Gate Bridge", "San Francisco", "Warsaw"),
)
EXTRA_WORDS = ("Zanzibar", "Kathmandu", "Ouagadougou", "Italy", "France", "Japan", "located", "capital")

SYSTEM_PROMPT = "You are a helpful assistant. You answer questions about places and people in short sentences."
SPECIAL = ["<pad>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|system|>" + SYSTEM_PROMPT + "<|end|>{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_RELATIONS = (
    "{} is located in {}.",
    "The {} is in {}.",
    "People say that {} is near {}.",
    "{} was seen in {} last year.",
    "Everyone knows {} lives in {}.",
)
_GENERIC = (
    "The weather was mild and the streets were quiet.",
    "Here is a fact. I read this in a book.",
    "As everyone knows, the river runs through the old city.",
    "Tell me about the museum. What do you know about the bridge?",
    "She wrote a letter to her brother and posted it in the morning.",
    "The train left the station at noon and arrived in the evening.",
    "Many tourists visit the tower, the museum and the cathedral every summer.",
    "A small cafe on the corner sells coffee, bread and cheese.",
)


def sentences() -> list[str]:
    """A few hundred sentences of made-up facts and filler: the tokenizer's and the statistics' text."""
    cities = ("Kathmandu", "Italy", "France", "Japan")
    facts = [
        rel.format(subject, city)
        for rel, (subject, true, new), extra in itertools.product(_RELATIONS, FACTS, cities)
        for city in (true, new, extra)
    ]
    return facts[::2] + list(_GENERIC) * 4 + [SYSTEM_PROMPT] * 4


def tokenizer(chat: bool) -> PreTrainedTokenizerFast:
    """Byte-level BPE (pieces carry their leading space, as GPT-2's and Llama 3's) with offsets and a pad token.

    "Zanzibar" and "Ouagadougou" are rare in the training text, so they split into several tokens.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, min_frequency=2, special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(sentences() + list(EXTRA_WORDS), trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    if chat:
        wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside: tiny models are fastest so, by far when other processes share the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# Wider than the usual 0.02: at 0.02 a random model's logits span about one nat, so no edit could move
# a target by more than that and the tests could not tell a working method from a broken one.
INIT_RANGE = 0.1


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=0, bos_token_id=1, eos_token_id=1, initializer_range=INIT_RANGE,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(vocab_size: int, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size, n_embd=64, n_layer=4, n_head=4, n_positions=256,
        pad_token_id=0, bos_token_id=1, eos_token_id=1, initializer_range=INIT_RANGE,
    )
    return GPT2LMHeadModel(config).eval()


def tiny(family: str, seed: int = 0) -> tuple[nn.Module, PreTrainedTokenizerFast]:
    """(model, tokenizer) for "llama" or "gpt2"."""
    tok = tokenizer(chat=family == "llama")
    build = {"llama": tiny_llama, "gpt2": tiny_gpt2}[family]
    return build(len(tok), seed), tok


def corpus() -> list[str]:
    """The statistics corpus (`StatsCache(corpus=corpus)`): the same made-up text."""
    return sentences()


# Enough tokens for a full-rank covariance of a 256-wide GPT-2 MLP input, yet quick.
STATS = StatsHParams(n_tokens=1024, seq_len=16, batch_size=4)

# Edit prompts end with the subject. A random model's attention moves little information from one
# position to another, so an edit at the subject shows at the next-token prediction only when the
# subject is where the prediction is made (a trained model routes it from earlier positions).
EDIT_PROMPT = "Everyone has heard of the {}"


def edit_requests(n: int = 1) -> list[EditRequest]:
    """The first `n` (<= 10) facts as EditRequests on `EDIT_PROMPT`, each with its own subject and target."""
    return [EditRequest(subject, EDIT_PROMPT, new, target_true=true) for subject, true, new in FACTS[:n]]
