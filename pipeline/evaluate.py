"""Scoring a rotation map against ground truth."""
import numpy as np
import xarray as xr


def circular_error(predicted, true, symmetry=1):
    """Per-sample angle error (radians) modulo ``2 pi / symmetry``, after the best global offset.

    The rVAE's angle is relative to the canonical image it learned, so the comparison removes
    one global offset (the circular mean of the differences) before measuring.
    """
    d = symmetry * (np.asarray(predicted, float) - np.asarray(true, float))
    offset = np.angle(np.nanmean(np.exp(1j * d)))  # NaN: a position without a value (a map's gaps)
    return np.angle(np.exp(1j * (d - offset))) / symmetry, offset / symmetry


def rotation_error(results, true_angle, symmetry=None):
    """Circular mean absolute error (degrees) of ``results.angle`` against a truth map on the cube grid.

    ``true_angle`` is a ``DataArray`` on the cube's ``(y, x)`` coordinates; it is looked up at
    every result position (atom columns, grid windows or scan positions).
    """
    symmetry = int(symmetry or results.attrs.get("symmetry", 1))
    angle = results["angle"].stack(flat=results["angle"].dims).reset_index("flat", drop=True) \
        if results["angle"].ndim > 1 else results["angle"]
    ys = results["y"].broadcast_like(results["angle"]).values.ravel()
    xs = results["x"].broadcast_like(results["angle"]).values.ravel()
    truth = true_angle.sel(y=xr.DataArray(ys), x=xr.DataArray(xs), method="nearest").values
    error, offset = circular_error(angle.values.ravel(), truth, symmetry)
    error = np.degrees(np.abs(error))
    return {"mae_deg": float(error.mean()), "median_deg": float(np.median(error)),
            "offset_deg": float(np.degrees(offset)), "symmetry": symmetry, "n": int(error.size)}
