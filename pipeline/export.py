"""``rvae export RESULTS OUT.hspy``: results as a HyperSpy signal, for HyperSpy, pyxem and LiberTEM users.

The signal is written with rosettasciio (already a dependency: no HyperSpy needed to write it)
and opens with ``hs.load`` or ``rsciio.hspy.file_reader``: the scan axes (``y``, ``x``; a
``sample`` axis for points results) are its navigation axes, with the results' physical scale,
offset and units, and its one signal axis runs over the quantities per position: the angle and
its posterior std in degrees, each latent and its std, the shifts (a spectrum's along energy in
the energy axis' units, and its classical reference), the reconstruction error
(their names in ``metadata.Signal.quantities``).
"""
import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np

from .results import load_results
from .stores import check_distinct, check_writable, output_lock, writing


def quantities(results):
    """``[(name, units, values)]`` per position, in the export's order."""

    found = []
    for name in ("angle", "angle_std"):
        if name in results:
            found.append((f"{name} (degree)", "degree", results.rvae.degrees(name).values))
    for i in range(results.sizes["latent"]):
        found.append((f"z{i}", "1", results["z"].isel(latent=i).values))
        found.append((f"z{i}_std", "1", results["z_std"].isel(latent=i).values))
    for name in ("shift", "shift_std", "reference_shift", "shift_y", "shift_x", "recon_error"):
        if name in results:
            found.append((name, results[name].attrs.get("units", ""), results[name].values))
    return found


def _axis(results, dim, index):
    values = results[dim].values
    step = np.diff(values)
    if dim == "sample" or len(values) < 2 or not np.allclose(step, step[0], rtol=1e-6):
        return {"name": dim, "size": len(values), "offset": 0.0, "scale": 1.0, "units": "", "navigate": True,
                "index_in_array": index}
    return {"name": dim, "size": len(values), "offset": float(values[0]), "scale": float(step[0]),
            "units": results[dim].attrs.get("units", ""), "navigate": True, "index_in_array": index}


def export_hspy(results_path, out_path, *, overwrite=False):
    """Write ``out_path`` (``.hspy``) from a complete results store; returns the path."""
    from rsciio.hspy import file_writer

    out = Path(out_path)
    if out.suffix != ".hspy":
        raise ValueError(f"{str(out)!r}: name the output NAME.hspy (HyperSpy's format)")
    check_distinct([out], [results_path])
    results = load_results(results_path)
    found = quantities(results)
    nav = list(results["recon_error"].dims)
    data = np.stack([values for _, _, values in found], axis=-1).astype(np.float32)
    axes = [_axis(results, dim, i) for i, dim in enumerate(nav)]
    axes.append({"name": "quantity", "size": len(found), "offset": 0.0, "scale": 1.0, "units": "", "navigate": False,
                 "index_in_array": len(nav)})
    original = {key: value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
                for key, value in results.attrs.items()}
    # the whole of a HyperSpy signal's dictionary, as rsciio's writer expects it
    signal = {"data": data, "axes": axes, "original_metadata": original, "attributes": {"_lazy": False},
              "tmp_parameters": {}, "learning_results": {}, "models": {},
              "package_info": {"name": "rvae-hpc", "version": results.attrs.get("software_version", "")},
              "metadata": {"General": {"title": "rVAE results",
                                       "original_filename": str(Path(results_path).name)},
                           "Signal": {"signal_type": "", "quantity": "rVAE results",
                                      "quantities": [name for name, _, _ in found],
                                      "units": [units for _, units, _ in found]}}}
    with output_lock(out), writing(out):
        check_writable(out, overwrite)
        # HDF5 crashes the process (a segmentation fault) when the disk fills under it: make sure first
        needed, free = data.nbytes + 2**20, shutil.disk_usage(out.parent).free
        if free < needed:
            raise OSError(errno.ENOSPC, f"cannot write {str(out)!r}: it needs about {needed / 2**20:.1f} MiB and "
                                        f"{free / 2**20:.1f} MiB are free")
        staging = out.with_name(f".{out.name}.partial-{os.getpid()}")  # removed if this process dies
        try:
            file_writer(str(staging), signal, show_progressbar=False)
            staging.replace(out)
        finally:
            staging.unlink(missing_ok=True)
    return out
