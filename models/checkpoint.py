"""Checkpoints that rebuild a model from the file alone: its constructor config and weights."""
import os
import pickle
import tempfile

import torch

from .rvae import RVAE


def save_checkpoint(path, model, **extra):
    """Write ``{"config", "state_dict", **extra}`` atomically (temp file, then rename)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    payload = {"config": dict(model.config), "state_dict": model.state_dict(), **extra}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ckpt-", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_checkpoint(path, map_location="cpu"):
    """Return ``(model, payload)``; the model is rebuilt from the stored config and weights."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}: train a model first (rvae train)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
        model = RVAE(**payload["config"])
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError, EOFError, TypeError, pickle.UnpicklingError) as err:
        raise ValueError(f"{path!r} is not a readable rvae checkpoint: {err}") from err
    return model, payload
