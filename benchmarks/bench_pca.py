"""What PCA, NMF and the rVAE each recover on the demo's four rotated grains (one run).

Runs the demo configuration (``rvae demo``'s: 384² lattice, atom-centred windows, 20 epochs) in
``--workdir`` unless it is already there, decomposes the same training windows with PCA and NMF
(pipeline.decomposition, as ``rvae report`` does), and prints for each representation:

* grain identity: purity of k-means with 4 clusters against the true grains (1.0 = every
  cluster one grain), from the first two PCA or NMF components, the rVAE's angle (as
  ``cos n angle, sin n angle``) or its two content latents;
* orientation: the circular MAE (degrees, modulo 60, after one global offset) of an angle read
  from the representation: the rVAE's own angle, and for PCA/NMF the angle of the point
  ``(component 1, component 2)`` scaled to the lattice's period (the best unsupervised reading
  of an angle from two components that we know of).

    python benchmarks/bench_pca.py            # works in $TMPDIR/rvae-benchmarks/bench-pca (--workdir)
"""
import argparse
from pathlib import Path

import numpy as np
import xarray as xr
from scratch import scratch


def purity(features, labels, k=4, seed=0):
    from sklearn.cluster import KMeans

    found = KMeans(k, n_init=10, random_state=seed).fit_predict(features)
    return sum(np.bincount(labels[found == c]).max() for c in range(k)) / len(labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=scratch("bench-pca"))
    args = parser.parse_args()

    from pipeline.decomposition import decompose
    from pipeline.evaluate import circular_error
    from pipeline.run import demo_config, run

    paths = run(demo_config(args.workdir), log=lambda line: None)
    results = xr.open_zarr(paths["results"]).load()
    cube = xr.open_zarr(paths["cube"])
    n = int(results.attrs["symmetry"])

    def truth(name, y, x):
        return cube[name].sel(y=xr.DataArray(y), x=xr.DataArray(x), method="nearest").values

    base = decompose(paths["patches"])
    rows = []
    for name in ("pca", "nmf"):
        grain, angle = truth("grain", base["y"], base["x"]), truth("true_angle", base["y"], base["x"])
        scores = base[name] - base[name].mean(axis=0)
        read = np.arctan2(scores[:, 1], scores[:, 0]) / n
        rows.append((name.upper(), purity(base[name], grain), circular_error(read, angle, n)[0]))
    grain = truth("grain", results["y"].values, results["x"].values)
    angle = truth("true_angle", results["y"].values, results["x"].values)
    a = n * results["angle"].values
    rows.append(("rVAE angle", purity(np.c_[np.cos(a), np.sin(a)], grain),
                 circular_error(results["angle"].values, angle, n)[0]))
    rows.append(("rVAE latents z", purity(results["z"].values.T, grain), None))
    print(f"{len(grain)} atom columns in 4 grains; k-means purity 1.0 = each cluster one grain; "
          f"orientation error modulo {360 // n} deg (chance: {90 / n:.0f} deg)")
    print(f"{'representation':16} {'grain purity':>12} {'orientation MAE (deg)':>22}")
    for name, score, error in rows:
        mae = f"{np.degrees(np.abs(error)).mean():.2f}" if error is not None else "-"
        print(f"{name:16} {score:12.3f} {mae:>22}")


if __name__ == "__main__":
    main()
