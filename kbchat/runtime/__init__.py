"""The model runtime: the loaded model, its weights (base + active deltas), the in-model patches and
the one decoder. Nothing else in kbchat touches the model's weights or its hooks."""

from kbchat.runtime.loading import Device, LoadedModel, load_model
from kbchat.runtime.model import ModelRuntime, Prompt, StaleWeights

__all__ = ["Device", "LoadedModel", "ModelRuntime", "Prompt", "StaleWeights", "load_model"]
