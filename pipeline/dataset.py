"""Reading the patch store for training."""
import numpy as np
import torch

from .stores import open_store
from .windows import WindowSpec


def load_training_stack(path):
    """The whole (bounded) training stack as a float32 tensor ``(N, C, h, w)``, and the store's attrs."""
    ds = open_store(path, what="patch store")
    if "patches" not in ds:
        raise ValueError(f"{str(path)!r} is not a patch store (no 'patches' variable); make one with rvae patches")
    stack = np.asarray(ds["patches"].values, dtype=np.float32)
    if stack.ndim != 4:
        raise ValueError(f"patch store {str(path)!r}: 'patches' must be (sample, channel, py, px), got {ds['patches'].dims}")
    return torch.from_numpy(stack), dict(ds.attrs)


def window_spec(attrs):
    """The :class:`WindowSpec` recorded in a patch store's attrs."""
    return WindowSpec.from_attrs(attrs)
