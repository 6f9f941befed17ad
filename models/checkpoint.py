"""Checkpoints that rebuild a model from the file alone: its constructor config and weights.

A checkpoint holds tensors and plain values (numbers, strings, lists, dicts) and nothing else.
It is read with torch's restricted unpickler (``weights_only=True``), which builds only those:
a file that names any other class or function is refused before anything in it runs, so a
checkpoint shared between users cannot execute code on the machine that loads it.
"""
import io
import os
import pickle
import tempfile

import torch

from .rvae import RVAE

FORMAT = "rvae-hpc checkpoint 1"


def save_checkpoint(path, model, **extra):
    """Write ``{"format", "config", "state_dict", **extra}`` atomically (temp file, then rename).

    ``extra`` must be tensors and plain values: anything else would make the file unreadable.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    payload = {"format": FORMAT, "config": dict(model.config), "state_dict": model.state_dict(), **extra}
    # Serialised in memory first: torch's zip writer reports a failed file write (a full disk) as
    # "unexpected pos", not as the OSError it was. Synced before the rename, so a crash leaves the
    # old file or the whole new one.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.partial-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_checkpoint(path, map_location="cpu"):
    """Return ``(model, payload)``; the model is rebuilt from the stored config and weights.

    Raises ``ValueError`` for a file that holds anything but tensors and plain values (a
    hostile or foreign pickle: refused without running it) or is no rvae checkpoint.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}: train a model first (rvae train)")
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint {path!r} is a directory, not a checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL " in str(err):  # torch's restricted unpickler names the first global it refused; nothing ran
            refused = str(err).split("GLOBAL ", 1)[1].split()[0]
            raise ValueError(f"refused to load {path!r}: it holds {refused}, not only tensors and plain values (a "
                             f"checkpoint that could run code when loaded); use a checkpoint written by rvae train"
                             ) from err
        raise ValueError(f"{path!r} is not a readable rvae checkpoint: {' '.join(str(err).split())[:200]}") from err
    except (RuntimeError, EOFError, OSError) as err:
        if isinstance(err, (PermissionError, IsADirectoryError)):
            raise
        raise ValueError(f"{path!r} is not a readable rvae checkpoint: {' '.join(str(err).split())[:200]}") from err
    if not isinstance(payload, dict) or "config" not in payload or "state_dict" not in payload:
        raise ValueError(f"{path!r} is not an rvae checkpoint (no model config and weights in it)")
    try:
        model = RVAE(**payload["config"])
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path!r} is not a readable rvae checkpoint: {' '.join(str(err).split())[:200]}") from err
    return model, payload
