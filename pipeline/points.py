"""Given sample positions for ``points`` mode: a CSV file or a Zarr group of coordinates.

Columns (CSV header names, or 1-D arrays of a Zarr group) are either ``row, col`` in pixels of the
cube or ``y, x`` in the cube's physical coordinates (converted with its ``y``/``x`` coordinates).
"""
from pathlib import Path

import numpy as np


def read_points(path, cube):
    """Positions ``(N, 2)`` (row, col), float pixels, of the points listed in ``path``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no points file at {str(path)!r}")
    columns = _read_columns(path)
    if {"row", "col"} <= columns.keys():
        rows, cols = columns["row"], columns["col"]
    elif {"y", "x"} <= columns.keys():
        rows, cols = (_to_pixels(columns[d], cube[d].values, d, path) for d in ("y", "x"))
    else:
        raise ValueError(f"{str(path)!r} needs columns 'row,col' (pixels) or 'y,x' (physical units); "
                         f"it has: {', '.join(columns) or 'none'}")
    points = np.stack([rows, cols], axis=-1).astype(float)
    if not np.isfinite(points).all():
        raise ValueError(f"{str(path)!r} has missing or non-numeric coordinates")
    return points


def _read_columns(path):
    if path.suffix.lower() == ".zarr":
        import zarr

        group = zarr.open_group(str(path), mode="r")
        return {name: np.asarray(array[:], dtype=float) for name, array in group.arrays() if array.ndim == 1}
    try:
        table = np.genfromtxt(path, delimiter=",", names=True, dtype=float, ndmin=1)
    except ValueError as err:
        raise ValueError(f"{str(path)!r} is not a CSV table of coordinates: {err}") from err
    if table.dtype.names is None:
        raise ValueError(f"{str(path)!r} has no header line naming its columns")
    return {name.strip().lower(): np.asarray(table[name]) for name in table.dtype.names}


def _to_pixels(values, coordinate, dim, path):
    step = coordinate[1] - coordinate[0] if len(coordinate) > 1 else 1.0
    pixels = (values - coordinate[0]) / step
    if np.any((pixels < -0.5) | (pixels > len(coordinate) - 0.5)):
        raise ValueError(f"{str(path)!r}: some {dim} values lie outside the cube "
                         f"({coordinate[0]:g} to {coordinate[-1]:g})")
    return pixels
