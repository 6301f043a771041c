"""Where things live inside a supported model: module-name templates per architecture family.

The architecture is data. Adding a family means adding one `Architecture` entry, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn


@dataclass(frozen=True)
class Architecture:
    """Module-name templates (`{}` is the layer index) for one model family."""

    family: str
    layer: str  # a whole block: its output is the residual stream
    mlp: str
    mlp_out: str  # the MLP's output projection: the matrix that locate-then-edit methods rewrite
    final_norm: str
    lm_head: str
    num_layers_attr: str
    transposed_weight: bool  # GPT-2's Conv1D stores (in, out); nn.Linear stores (out, in)
    mlp_in: tuple[str, ...] = ()  # the MLP's input projection(s): Llama's gate and up, GPT-2's c_fc

    def layer_name(self, i: int) -> str:
        return self.layer.format(i)

    def mlp_out_name(self, i: int) -> str:
        return self.mlp_out.format(i)

    def mlp_matrix_names(self, i: int) -> tuple[str, ...]:
        """Every weight matrix of layer i's MLP, input projections first."""
        return tuple(t.format(i) for t in self.mlp_in) + (self.mlp_out_name(i),)


LLAMA = Architecture(
    family="llama",
    layer="model.layers.{}",
    mlp="model.layers.{}.mlp",
    mlp_out="model.layers.{}.mlp.down_proj",
    final_norm="model.norm",
    lm_head="lm_head",
    num_layers_attr="num_hidden_layers",
    transposed_weight=False,
    mlp_in=("model.layers.{}.mlp.gate_proj", "model.layers.{}.mlp.up_proj"),
)

GPT2 = Architecture(
    family="gpt2",
    layer="transformer.h.{}",
    mlp="transformer.h.{}.mlp",
    mlp_out="transformer.h.{}.mlp.c_proj",
    final_norm="transformer.ln_f",
    lm_head="lm_head",
    num_layers_attr="n_layer",
    transposed_weight=True,
    mlp_in=("transformer.h.{}.mlp.c_fc",),
)

# Llama-shaped decoders (pre-norm blocks, a gated MLP gate/up -> down) share Llama's module names; each
# keeps its own family name so that per-family defaults (methods/hparams.py) can tell them apart.
QWEN2 = replace(LLAMA, family="qwen2")
MISTRAL = replace(LLAMA, family="mistral")
# Gemma 3's text model (Gemma3ForCausalLM, model_type "gemma3_text"): Llama's names, its norms and
# embedding scale differ only inside the modules.
GEMMA3 = replace(LLAMA, family="gemma3")
# Phi-3 fuses gate and up into one projection (out = 2 * intermediate); down_proj is as Llama's.
PHI3 = replace(LLAMA, family="phi3", mlp_in=("model.layers.{}.mlp.gate_up_proj",))

GPT_NEOX = Architecture(
    family="gpt_neox",
    layer="gpt_neox.layers.{}",
    mlp="gpt_neox.layers.{}.mlp",
    mlp_out="gpt_neox.layers.{}.mlp.dense_4h_to_h",
    final_norm="gpt_neox.final_layer_norm",
    lm_head="lm_head",  # transformers 5 (4.x named it embed_out)
    num_layers_attr="num_hidden_layers",
    transposed_weight=False,
    mlp_in=("gpt_neox.layers.{}.mlp.dense_h_to_4h",),
)

# model_type (from the Hugging Face config) -> templates. Families with tests on tiny random models
# (tests/library/test_families.py): llama, gpt2, qwen2, mistral, phi3, gemma3_text, gpt_neox; the
# other Llama-shaped entries share Llama's names and defaults untested.
_FAMILIES = {
    "llama": LLAMA,
    "mistral": MISTRAL,
    "qwen2": QWEN2,
    "qwen3": LLAMA,
    "gemma": LLAMA,
    "gemma2": LLAMA,
    "gemma3_text": GEMMA3,
    "phi3": PHI3,
    "olmo": LLAMA,
    "gpt2": GPT2,
    "gpt_neox": GPT_NEOX,
}


class UnsupportedModel(ValueError):
    """The model's architecture has no module-name templates here."""


def architecture_of(model: nn.Module) -> Architecture:
    """The module-name templates for `model`, from its config's model_type."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    try:
        return _FAMILIES[model_type]
    except KeyError:
        known = ", ".join(sorted(_FAMILIES))
        raise UnsupportedModel(f"no editing templates for model_type {model_type!r} (supported: {known})") from None


def num_layers(model: nn.Module) -> int:
    return int(getattr(model.config, architecture_of(model).num_layers_attr))


def get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise UnsupportedModel(f"model has no module {name!r}") from None
