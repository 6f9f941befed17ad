"""Checkpoints that rebuild a model from the file alone: its constructor config and weights.

A checkpoint holds tensors and plain values (numbers, strings, lists, dicts) and nothing else.
It is read with torch's restricted unpickler (``weights_only=True``), which builds only those:
a file that names any other class or function is refused before anything in it runs, so a
checkpoint shared between users cannot execute code on the machine that loads it.
"""
import io
import os
import pickle
import stat
import tempfile

import torch

from .im2spec import ImageToSpectrum, SpectrumToImage
from .rvae import RVAE
from .spectral import SpectrumVAE

FORMAT = "rvae-hpc checkpoint 1"
# by the config's "kind" (image models record none)
MODELS = {"image": RVAE, "spectrum": SpectrumVAE, "im2spec": ImageToSpectrum, "spec2im": SpectrumToImage}


def build_model(config):
    """The model a checkpoint's ``config`` describes (``ValueError`` for an unknown kind)."""
    kind = config.get("kind", "image")
    if kind not in MODELS:
        raise ValueError(f"its model kind {kind!r} is not one of {sorted(MODELS)}")
    return MODELS[kind](**config)


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
    hostile or foreign pickle: refused without running it), that is no rvae checkpoint, or whose
    weights do not fit its config. The config is checked against the weights' shapes on the
    ``meta`` device (no memory) before the model is built, so a config asking for a huge model
    allocates nothing.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}: train a model first (rvae train)")
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint {path!r} is a directory, not a checkpoint file")
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:  # a FIFO is not waited on
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"checkpoint {path!r} is not a regular file")
        if info.st_size == 0:
            raise ValueError(f"checkpoint {path!r} is empty (0 bytes): not an rvae checkpoint")
        payload = _read(f, path, map_location)
    if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict) \
            or not isinstance(payload.get("state_dict"), dict):
        raise ValueError(f"{path!r} is not an rvae checkpoint (no model config and weights in it)")
    config, weights = payload["config"], payload["state_dict"]
    try:
        with torch.device("meta"):  # the config's model, without memory: its shapes against the weights'
            expected = {name: tuple(t.shape) for name, t in build_model(config).state_dict().items()}
        found = {name: tuple(t.shape) if isinstance(t, torch.Tensor) else None for name, t in weights.items()}
        if expected != found:
            name = next(n for n in sorted({*expected, *found}) if expected.get(n) != found.get(n))
            raise ValueError(f"its weights do not fit its model config ({name}: the config makes "
                             f"{expected.get(name, 'nothing')}, the file holds {found.get(name, 'nothing')})")
        model = build_model(config)
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path!r} is not a readable rvae checkpoint: {' '.join(str(err).split())[:200]}") from err
    return model, payload


def _read(f, path, map_location):
    """The payload of an open checkpoint file, read by torch's restricted unpickler."""
    try:
        return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL " in str(err):  # torch's restricted unpickler names the first global it refused; nothing ran
            refused = str(err).split("GLOBAL ", 1)[1].split()[0]
            raise ValueError(f"refused to load {path!r}: it holds {refused}, not only tensors and plain values (a "
                             f"checkpoint that could run code when loaded); use a checkpoint written by rvae train"
                             ) from err
        raise ValueError(f"{path!r} is not a readable rvae checkpoint: {_first_words(err)}") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        if isinstance(err, (PermissionError, IsADirectoryError)):
            raise
        raise ValueError(f"{path!r} is not a readable rvae checkpoint: {_first_words(err)}") from err


def _first_words(err):
    """The gist of a loader's error, one line: its first sentence, or its type when it says nothing."""
    text = " ".join(str(err).split())
    return (text.split(". ")[0][:200] or type(err).__name__) + " (is it a file written by rvae train?)"
