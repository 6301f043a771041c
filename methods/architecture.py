"""Where things live inside a supported model: module-name templates per architecture family.

The architecture is data. Adding a family means adding one `Architecture` entry, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

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

# model_type (from the Hugging Face config) -> family. Llama-shaped decoders share Llama's names.
_FAMILIES = {
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
    "qwen3": LLAMA,
    "gemma": LLAMA,
    "gemma2": LLAMA,
    "phi3": LLAMA,
    "olmo": LLAMA,
    "gpt2": GPT2,
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
