"""Shrinking a trained editor for shipping: the networks' low-rank factors (`a`, `b`: almost all of the
file) are stored in bfloat16, everything else (steps, scales, normaliser statistics) as trained.
`load_editor` reads such a file unchanged (the factors are copied into the float32 parameters), so a
shipped editor differs from the trained one only by bfloat16 rounding of those factors.

    python -m kbchat.training.ship TRAINED.safetensors methods/mend/editors/NAME.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SHRUNK = (".a", ".b")  # the factors of each network's layers


def ship(src: Path, dst: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    with safe_open(str(src), framework="pt") as f:
        header = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if any(k.startswith("train.") for k in tensors):
        raise ValueError(f"{src} is a training-state file, not an editor")
    for key, value in tensors.items():
        if key.endswith(SHRUNK) and value.is_floating_point():
            tensors[key] = value.to(dtype).contiguous()
    about = json.loads(header.get("about", "{}"))
    about["storage"] = f"network factors (a, b) in {str(dtype).removeprefix('torch.')}, the rest as trained"
    header["about"] = json.dumps(about, sort_keys=True)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst), metadata=header)
    return dst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="store a trained editor's network factors in bfloat16")
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    args = parser.parse_args(argv)
    print(ship(args.src, args.dst))


if __name__ == "__main__":
    main()
