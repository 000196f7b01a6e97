"""Resolve ``--weights default|random|PATH`` into a state dict.

``default`` keeps torchvision's real pretrained loading (download into the torch
hub cache, or read it from there).  Offline, it fails with a message that names
the alternatives instead of a stack trace.
"""

from __future__ import annotations

import socket
import urllib.error
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torchvision.models import WeightsEnum

from export.errors import WeightsUnavailable

DOWNLOAD_TIMEOUT_S = 30.0


def load_pretrained(weights: WeightsEnum, *, model_name: str) -> dict[str, torch.Tensor]:
    """torchvision's own pretrained loading, with offline failures made readable."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a black-holed network must not hang forever
    try:
        state: dict[str, torch.Tensor] = weights.get_state_dict(progress=True, check_hash=True)
        return state
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise WeightsUnavailable(
            f"could not load the pretrained weights for {model_name} ({weights}): {e}.\n"
            f"  They are downloaded from {weights.url} into {hub}; this machine looks offline.\n"
            "  Alternatives:\n"
            "    --weights random   untrained weights (the pipeline works, predictions are meaningless)\n"
            "    --weights PATH     a local checkpoint (a state dict saved with torch.save)\n"
            f"    or copy the file to {hub} and run again with --weights default"
        ) from e
    finally:
        socket.setdefaulttimeout(previous)


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Load a fine-tuned state dict; accepts a bare state dict or common wrappers."""
    if not path.is_file():
        raise WeightsUnavailable(f"--weights {path}: no such file (expected default, random or a checkpoint path)")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsUnavailable(f"--weights {path}: not a readable torch checkpoint: {e}") from e
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsUnavailable(f"--weights {path}: expected a state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}
