"""bfloat16 weights on a CPU: oneDNN for passes over many tokens, PyTorch's own GEMV for one-token steps.

For a 64-token prefill oneDNN's bf16 GEMM is ~16x faster than PyTorch's native kernel; for a one-token
step its output layer (49k words) takes ~2x longer than the native GEMV, which a one-token step spends
most of its time in (`bench/results/speed-decoding.md`). oneDNN's switch
(`torch._C._set_mkldnn_enabled`) is process-wide, so a model with a `PassSwitch` runs its forward
passes one at a time under one process lock, setting the switch for each pass and restoring it after.
Concurrent answers then take turns per pass instead of sharing the cores, which on a CPU costs no
throughput. Answers are those of bfloat16 weights either way; the kernels sum in another order, so a
last bit may differ from oneDNN's, as it may between any two bf16 kernels.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

# The switch is one per process, so the lock guarding it is too (re-entrant: a pass may nest a pass).
_PASSES = threading.RLock()


def wanted(device: str, dtype: torch.dtype) -> bool:
    """Whether a model on `device` in `dtype` gains from the switch: bfloat16 on a CPU with oneDNN."""
    return device == "cpu" and dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()


def _one_token(args: tuple, kwargs: dict) -> bool:
    ids = kwargs.get("input_ids", args[0] if args else None)
    return isinstance(ids, torch.Tensor) and ids.numel() == 1  # one row, one token (batched steps: GEMM)


class PassSwitch:
    """Hooks on `model`'s forward that take the process lock and set oneDNN per pass; `remove()` undoes."""

    def __init__(self, model: nn.Module) -> None:
        self._state = threading.local()  # per thread: the switch as it was before each open pass
        self._handles = (
            model.register_forward_pre_hook(self._enter, with_kwargs=True),
            model.register_forward_hook(self._leave, with_kwargs=True, always_call=True),
        )

    def _enter(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        _PASSES.acquire()
        if not hasattr(self._state, "stack"):
            self._state.stack = []
        self._state.stack.append(torch._C._get_mkldnn_enabled())
        torch._C._set_mkldnn_enabled(not _one_token(args, kwargs))

    def _leave(self, _module: nn.Module, _args: tuple, _kwargs: dict, _output: object) -> None:
        torch._C._set_mkldnn_enabled(self._state.stack.pop())
        _PASSES.release()

    def __deepcopy__(self, memo: dict) -> PassSwitch:
        # A deep copy of the model (e.g. a working copy for value optimisation) keeps its hooks, which
        # then share this switch: the same process lock and the same per-pass setting.
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
