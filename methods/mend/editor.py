"""MEND's editor network: maps each token's (x, delta) pair to a new pair (x~, delta~).

One network per weight shape, shared by the matrices of that shape, each with its own scale and shift
(a "mode") and its own step alpha. Inputs are normalised with running statistics per matrix; the
network is a residual stack of low-rank layers whose last factor starts at zero, and its output is
mapped back through the same statistics, so at initialisation x~ = x and delta~ = delta exactly and
the first update is the plain gradient step -alpha * sum_t delta_t x_t^T.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from methods.mend.instruct import Task

EPS = 1e-7  # added to the running standard deviation, as MEND does


@dataclass(frozen=True)
class EditorSpec:
    """What an editor is for and how it is shaped; stored as JSON in its checkpoint."""

    kind: str  # "mend" or "instructedit"
    family: str  # architecture family of the model it was trained on
    fingerprint: str  # methods.model_fingerprint of that model
    modules: tuple[tuple[str, int, int], ...]  # (module name, out, in) of each edited matrix
    rank: int
    n_hidden: int
    alpha_init: float
    tasks: tuple[Task, ...] = ()  # InstructEdit's tasks (empty for MEND)
    # (x, delta) at the subject's last token rather than where the target is predicted (MendHParams.at_subject)
    at_subject: bool = False
    # The ridge of the whitening the editor was trained under (its update is then always whitened so), or None
    whiten: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EditorSpec:
        d = json.loads(text)
        d["modules"] = tuple(tuple(m) for m in d["modules"])
        d["tasks"] = tuple(Task(t["name"], tuple(t["wordings"])) for t in d["tasks"])
        return cls(**d)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m[0] for m in self.modules)


def shape_key(out_features: int, in_features: int) -> str:
    return f"{out_features}x{in_features}"


class GradientTransform(nn.Module):
    """Residual low-rank layers over dim = in + out, with a per-mode scale and shift before each.

    Layer l: h <- h + B_l act(A_l (h * scale_l[m] + shift_l[m])) + bias_l, act = ReLU except on the last.
    """

    def __init__(self, dim: int, rank: int, n_hidden: int, n_modes: int, generator: torch.Generator) -> None:
        super().__init__()
        n, r = n_hidden + 1, min(rank, dim)
        std = (2.0 / (dim + r)) ** 0.5  # Xavier-normal
        self.a = nn.Parameter(torch.randn(n, r, dim, generator=generator) * std)  # (L, r, D)
        self.b = nn.Parameter(torch.zeros(n, dim, r))  # (L, D, r): zero, so the map starts as the identity
        self.bias = nn.Parameter(torch.zeros(n, dim))  # (L, D)
        self.scale = nn.Parameter(torch.ones(n, n_modes, dim))  # (L, M, D)
        self.shift = nn.Parameter(torch.zeros(n, n_modes, dim))  # (L, M, D)
        # Running statistics of the raw inputs, per mode (Welford): kept in the checkpoint.
        self.register_buffer("count", torch.zeros(n_modes, dtype=torch.float64))  # (M,)
        self.register_buffer("mean", torch.zeros(n_modes, dim, dtype=torch.float64))  # (M, D)
        self.register_buffer("m2", torch.zeros(n_modes, dim, dtype=torch.float64))  # (M, D)

    @torch.no_grad()
    def observe(self, mode: int, u: torch.Tensor) -> None:
        """Fold the rows of u (N, D) into mode's running mean and variance."""
        u = u.double()
        n, mean = u.shape[0], u.mean(0)  # (D,)
        m2 = ((u - mean) ** 2).sum(0)  # (D,)
        total = self.count[mode] + n
        diff = mean - self.mean[mode]
        self.m2[mode] += m2 + diff**2 * self.count[mode] * n / total
        self.mean[mode] += diff * n / total
        self.count[mode] = total

    def stats(self, mode: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean (D,), std + EPS (D,)) in float32; (0, 1) before two rows have been seen."""
        if self.count[mode] < 2:
            dim = self.mean.shape[1]
            return torch.zeros(dim, device=self.mean.device), torch.ones(dim, device=self.mean.device)
        std = (self.m2[mode] / (self.count[mode] - 1)).sqrt()
        return self.mean[mode].float(), (std + EPS).float()

    def forward(self, u: torch.Tensor, mode: int) -> torch.Tensor:
        """(N, D) raw pairs -> (N, D) edited pairs; exactly u while every B and bias is zero."""
        mean, std = self.stats(mode)
        z = (u - mean) / std  # (N, D)
        h = z
        last = self.a.shape[0] - 1
        for layer in range(last + 1):
            v = h * self.scale[layer, mode] + self.shift[layer, mode]  # (N, D)
            a = v @ self.a[layer].T  # (N, r)
            if layer < last:
                a = F.relu(a)
            h = h + a @ self.b[layer].T + self.bias[layer]  # (N, D)
        return u + std * (h - z)


class Editor(nn.Module):
    """The networks and step sizes for every matrix in `spec.modules`.

    `factors` turns one edit's captured (x, delta) into the `Update` factors of a matrix:
    left = -alpha * delta~ (out, r) and right = x~ (in, r), r = the edit's target tokens.
    """

    def __init__(self, spec: EditorSpec, seed: int = 0) -> None:
        super().__init__()
        self.spec = spec
        generator = torch.Generator().manual_seed(seed)
        shapes = sorted({(out, inp) for _n, out, inp in spec.modules})
        self.mode: dict[str, tuple[str, int, int]] = {}  # name -> (shape key, mode, alpha index)
        counts: dict[str, int] = {}
        for i, (name, out, inp) in enumerate(spec.modules):
            key = shape_key(out, inp)
            self.mode[name] = (key, counts.get(key, 0), i)
            counts[key] = counts.get(key, 0) + 1
        self.nets = nn.ModuleDict({
            shape_key(out, inp): GradientTransform(out + inp, spec.rank, spec.n_hidden, counts[shape_key(out, inp)],
                                                   generator)
            for out, inp in shapes
        })
        # alpha = exp(log_alpha): it stays positive, and Adam's steps on it are relative changes,
        # the same whatever the model's gradient scale.
        self.log_alpha = nn.Parameter(torch.full((len(spec.modules),), math.log(spec.alpha_init)))  # (n_matrices,)

    @property
    def alpha(self) -> torch.Tensor:
        """(n_matrices,) the step of each matrix, in `spec.modules` order."""
        return self.log_alpha.exp()

    def observe(self, name: str, x: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor) -> None:
        """Update `name`'s running statistics with the real (unpadded) pairs of x (B, R, in), delta (B, R, out)."""
        key, mode, _ = self.mode[name]
        keep = mask.reshape(-1) > 0
        u = torch.cat([x, delta], -1).reshape(-1, x.shape[-1] + delta.shape[-1])[keep]  # (N, D)
        self.nets[key].observe(mode, u)

    def factors(self, name: str, x: torch.Tensor, delta: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per edit b: left (B, out, R) = -alpha * delta~^T and right (B, in, R) = x~^T, padding zeroed."""
        key, mode, index = self.mode[name]
        b, r, d_in = x.shape
        u = torch.cat([x, delta], -1).float().reshape(b * r, -1)  # (B*R, in + out)
        edited = self.nets[key](u, mode).reshape(b, r, -1) * mask[..., None]  # (B, R, D)
        x_new, delta_new = edited[..., :d_in], edited[..., d_in:]  # (B, R, in), (B, R, out)
        left = -self.alpha[index] * delta_new.transpose(1, 2)  # (B, out, R)
        return left, x_new.transpose(1, 2)  # (B, out, R), (B, in, R)
