"""A worked analysis of an rvae run: rotation statistics per grain, orientation domains, the
global offset removed against a reference grain, figures, and an export for HyperSpy.

    make demo && python examples/analyse_results.py rvae-demo

Runs on any run directory with ``results.zarr``; where ``cube.zarr`` holds the synthetic data's
ground truth (``grain``, ``true_angle``) it also compares against it. The test suite runs it.
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from pipeline.export import export_hspy  # noqa: E402
from pipeline.results import wrap_angle  # noqa: E402

work = Path(sys.argv[1] if len(sys.argv) > 1 else "rvae-demo")
res = xr.open_zarr(work / "results.zarr").load()
n = res.rvae.symmetry
print(f"{res.attrs['title']}: {res['recon_error'].size} positions, {res.sizes['latent']} latents, "
      f"angles modulo {360 / n:g} deg")

# Orientation domains straight from the rotation map, and their circular statistics.
domains = res.rvae.domains(4)
means, spreads = res.rvae.circular_mean(by=domains), res.rvae.circular_std(by=domains)
for label in means:
    print(f"domain {int(label)}: {int((domains == label).sum())} positions, circular mean {means[label]:6.2f} deg, "
          f"std {spreads[label]:.2f} deg")

# Remove the global offset: the domain of the top-left position becomes the 0-degree reference.
reference = domains.values.ravel()[0]
aligned = res.rvae.remove_offset(angle=means[reference])
print(f"after removing {means[reference]:.2f} deg: domain {int(reference)} reads "
      f"{aligned.rvae.circular_mean(where=domains == reference):.2f} deg")

# Against the ground truth, where the run used the synthetic data.
cube = work / "cube.zarr"
if cube.exists() and "grain" in xr.open_zarr(cube):
    truth = xr.open_zarr(cube)
    at = {"y": xr.DataArray(res["y"].broadcast_like(res["recon_error"]).values.ravel()),
          "x": xr.DataArray(res["x"].broadcast_like(res["recon_error"]).values.ravel())}
    grain = truth["grain"].sel(**at, method="nearest").values
    true = truth["true_angle"].sel(**at, method="nearest").values
    true = np.degrees(wrap_angle(true - true[0], n))  # the same reference: the top-left position
    shape = res["recon_error"].shape
    for g in np.unique(grain):
        inside = xr.DataArray((grain == g).reshape(shape), dims=res["recon_error"].dims)
        found = aligned.rvae.circular_mean(where=inside)
        print(f"grain {g}: true {true[grain == g][0]:6.2f} deg, rVAE {found:6.2f} deg (both relative to the "
              f"top-left grain)")

fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
aligned.rvae.plot(ax=axes[0])
axes[0].set_title("rotation, offset removed")
domains.plot(ax=axes[1], cmap="tab10") if domains.ndim == 2 else axes[1].scatter(
    res["x"], res["y"], c=domains, s=6, cmap="tab10")
axes[1].set_title("orientation domains")
fig.tight_layout()
fig.savefig(work / "analysis.png", dpi=100)
print(f"wrote {work / 'analysis.png'}")
print(f"wrote {export_hspy(work / 'results.zarr', work / 'results.hspy', overwrite=True)} (hs.load opens it)")
