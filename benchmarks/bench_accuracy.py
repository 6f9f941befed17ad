"""Rotation-map accuracy with default settings, on cases the project was not tuned on, against the
classical reference; the latents' separation of dopants and vacancies against PCA's and NMF's;
the demo's disentanglement of content from rotation.

Cases (every one with four grains turned by known angles, every grain with content of its own):

* nine crystal structures built with ASE and rendered as incoherent HAADF or ABF-like STEM at a
  realistic dose, with scan jitter and drift (``lattice_cases.py``): 2H-MoS2 with vacancies and
  dopants, WSe2 next to MoSe2, graphene at a low dose, hBN, SrTiO3 [001] in HAADF (dopants,
  thickness) and in ABF, Si, GaAs and Cu seen along [110];
* atomap's experimental ADF and ABF STEM images (a perovskite-like lattice, 400x380; GPL-3 test
  data fetched by scripts/fetch-test-data.sh), their centre turned into four 256 px regions (these
  grains hold the same content);
* the demo's synthetic four-grain lattice.

Each case runs the whole chain with the configuration's defaults (``rvae run`` with only ``input``
and ``train.seed`` set), encodes once more with the same model and ``encode.refine: false`` (the
encoder's amortized angle), and scores every encoded column at least half a window (and
``--margin`` px) from a grain border: circular MAE after one global offset, modulo the crystal's
rotational symmetry in real space for the rVAE (its map claims that period; for the real images,
whose crystal the project does not know, the spectrum's) and modulo the spectrum's for the
classical local-FFT reference (its map can claim no more).

Then, per case with dopants or vacancies at known columns: the ROC AUC with which the best rVAE
latent (and the best of the first two PCA or NMF components of the same windows) tells changed
columns from host columns; and, for the demo (identical content in every grain), each latent's
between-grain / within-grain variance ratio (near 0: z does not see the rotation).

    python benchmarks/bench_accuracy.py                      # every case, seeds 0 1 2
    python benchmarks/bench_accuracy.py --cases MoS2 demo --seeds 0
"""
import argparse
import os
import re
from pathlib import Path

import numpy as np
import xarray as xr
from lattice_cases import CASES, render
from scipy import ndimage
from scratch import scratch

ANGLES = (0.0, 8.0, -12.0, 21.0)  # degrees, the real images' regions
TESTDATA = Path(os.environ.get("RVAE_TEST_DATA", Path.home() / ".cache" / "rvae-hpc" / "testdata"))


def rotated_regions(image, angles=ANGLES, size=256):
    """A ``2 size`` square image of four regions, each the centre of ``image`` turned by one angle, and the
    truth: angle (radians) and region index per pixel."""
    out = np.zeros((2 * size, 2 * size), np.float32)
    truth = np.zeros_like(out)
    region = np.zeros(out.shape, np.int16)
    cy, cx = image.shape[0] // 2, image.shape[1] // 2
    for k, degrees in enumerate(angles):
        turned = ndimage.rotate(image, degrees, reshape=False, order=3, mode="reflect")
        r, c = divmod(k, 2)
        out[r * size:(r + 1) * size, c * size:(c + 1) * size] = turned[cy - size // 2:cy + size // 2,
                                                                      cx - size // 2:cx + size // 2]
        truth[r * size:(r + 1) * size, c * size:(c + 1) * size] = np.radians(degrees)
        region[r * size:(r + 1) * size, c * size:(c + 1) * size] = k
    return out, truth, region


def score(angle, truth, symmetry):
    from pipeline.evaluate import circular_error

    keep = np.isfinite(angle)
    return float(np.degrees(np.abs(circular_error(angle[keep], truth[keep], symmetry)[0])).mean())


def scored_positions(results, grains, window, margin):
    """Each result position's pixel ``(rows, cols)`` and whether it is scored: at least half a
    window and ``margin`` px from the image's edges and from any other grain."""
    if "row" in results:
        rows, cols = results["row"].values, results["col"].values
    else:  # grid results: the window centres
        rows, cols = np.meshgrid(results["y"].values, results["x"].values, indexing="ij")
    rows, cols = np.asarray(rows).round().astype(int).ravel(), np.asarray(cols).round().astype(int).ravel()
    inside = np.zeros_like(grains, dtype=float)
    for g in np.unique(grains):  # each pixel's distance to another grain or the edge
        own = np.pad(grains == g, 1)
        inside[grains == g] = ndimage.distance_transform_edt(own)[1:-1, 1:-1][grains == g]
    return rows, cols, inside[rows, cols] >= max(margin, window // 2)


def evaluate(paths, truth, grains, symmetry, margin, results=None):
    """Columns scored, window, the symmetry the rVAE's map claims, and the MAE of the rVAE's and
    the classical angles in ``results`` (default: the run's), the rVAE's modulo ``symmetry`` (None:
    the lattice's, as the patch stage read it from the power spectrum)."""
    res = xr.open_zarr(results or paths["results"]).load()
    patches = xr.open_zarr(paths["patches"]).attrs
    window, symmetry = patches.get("window_spec_window", 0), symmetry or int(patches.get("lattice_symmetry", 1))
    rows, cols, away = scored_positions(res, grains, window, margin)
    true = truth[rows, cols][away]
    found = {"positions": int(away.sum()), "window": window, "symmetry": int(res.attrs["symmetry"]),
             "rVAE": score(res["angle"].values.ravel()[away], true, symmetry)}
    if "reference_angle" in res:
        found["classical"] = score(res["reference_angle"].values.ravel()[away], true,
                                   int(res["reference_angle"].attrs["symmetry"]))
    return found


def amortized(paths):
    """The run's model encoded again without refinement: the encoder's own angles."""
    from pipeline.encode import encode

    out = paths["results"].with_name("results-amortized.zarr")
    encode(paths["cube"], paths["patches"], paths["checkpoint"], out, refine=False, overwrite=True,
           log=lambda line: None)
    return out


def separation(paths, sites):
    """ROC AUC (the better of a score and its negative) with which the best rVAE latent, and the
    best of the first two PCA and NMF components, tell changed columns (dopants, vacancies) from
    the rest: each window is matched to the nearest true column within 2 px."""
    from scipy.spatial import cKDTree
    from sklearn.metrics import roc_auc_score

    from pipeline.decomposition import decompose

    tree = cKDTree(np.c_[sites["row"], sites["col"]])

    def labels(rows, cols):
        distance, index = tree.query(np.c_[rows, cols])
        return sites["changed"][index], distance < 2

    def best(scores, label):
        return max(max(a, 1 - a) for a in (roc_auc_score(label, s) for s in scores))

    res = xr.open_zarr(paths["results"]).load()
    label, matched = labels(res["row"].values, res["col"].values)
    if label[matched].all() or not label[matched].any():
        return None
    found = {"rVAE": best(res["z"].values[:, matched], label[matched])}
    patches = xr.open_zarr(paths["patches"])
    base = decompose(paths["patches"])
    label, matched = labels(patches["row"].values, patches["col"].values)
    for name in ("pca", "nmf"):
        found[name.upper()] = best(base[name][matched].T, label[matched])
    return found


def disentanglement(paths):
    """Each latent's between-grain / within-grain variance ratio on the demo's identical grains."""
    res = xr.open_zarr(paths["results"]).load()
    grain = xr.open_zarr(paths["cube"])["grain"].sel(y=xr.DataArray(res["y"].values), x=xr.DataArray(res["x"].values),
                                                     method="nearest").values
    ratios = []
    for z in res["z"].values:
        groups = [z[grain == g] for g in np.unique(grain)]
        ratios.append(float(np.var([g.mean() for g in groups]) / np.mean([g.var() for g in groups])))
    return ratios


def slug(name):
    """A case's name as a file name: ``SrTiO3 [001] ABF`` -> ``SrTiO3-001-ABF``."""
    return re.sub(r"\W+", "-", name.split(":")[0].split(",")[0]).strip("-")


def inputs(names, workdir):
    """``{case: (image path, truth, grains, symmetry, sites or None)}`` for the chosen cases (the
    demo's image, truth and grains come from its own cube)."""
    found = {}
    for case in CASES:
        key = slug(case.name)
        if names and not any(key.startswith(name) for name in names):
            continue
        image, truth, grains, sites = render(case, seed=0)
        path = workdir / f"{key}.npy"
        np.save(path, image)
        found[case.name] = (path, truth, grains, case.symmetry, sites)
    for name in ("ADF", "ABF"):
        if names and not any(slug(f"real {name}").startswith(n) for n in names):
            continue
        from rsciio.hspy import file_reader

        real = file_reader(str(TESTDATA / f"test_{name}_cropped.hdf5"))[0]["data"].astype(np.float32)
        image, truth, grains = rotated_regions(real)
        path = workdir / f"real-{name}.npy"
        np.save(path, image)
        found[f"real {name} (atomap)"] = (path, truth, grains, None, None)  # scored as its spectrum reads
    if not names or any("synthetic-demo".startswith(n) for n in names):
        found["synthetic demo"] = (None, None, None, 6, None)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=scratch("bench-accuracy"))
    parser.add_argument("--margin", type=int, default=16,
                        help="px from grain borders left out of the score (at least half the window)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (train.seed)")
    parser.add_argument("--cases", nargs="*", default=[],
                        help="the cases to run, by the start of their names (MoS2, WSe2, graphene, hBN, "
                             "SrTiO3-001-HAADF, SrTiO3-001-ABF, Si, GaAs, Cu, real-ADF, real-ABF, synthetic); "
                             "default: all")
    args = parser.parse_args()

    from pipeline.config import RunConfig
    from pipeline.run import demo_config, run

    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"{'case':44} {'seed':>4} {'columns':>7} {'window':>6} {'n':>2} {'rVAE (default)':>14} {'amortized':>10} "
          f"{'classical':>10}", flush=True)
    extras = []
    for name, (image, truth, grains, symmetry, sites) in inputs(args.cases, args.workdir).items():
        for seed in args.seeds:
            workdir = args.workdir / f"{slug(name)}-{seed}"
            if image is None:  # the demo: its own cube and truth
                config = demo_config(workdir)
                config = config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})
            else:
                config = RunConfig.model_validate({"workdir": str(workdir), "input": str(image),
                                                   "train": {"seed": seed}})
            paths = run(config, overwrite=True, progress=False, log=lambda line: None)
            if image is None:
                cube = xr.open_zarr(paths["cube"])
                truth, grains = cube["true_angle"].values, cube["grain"].values
            found = evaluate(paths, truth, grains, symmetry, args.margin)
            unrefined = evaluate(paths, truth, grains, symmetry, args.margin, amortized(paths))["rVAE"]
            print(f"{name:44} {seed:4d} {found['positions']:7d} {found['window']:>6} {found['symmetry']:2d} "
                  f"{found['rVAE']:13.2f}° {unrefined:9.2f}° {found.get('classical', float('nan')):9.2f}°",
                  flush=True)
            if sites is not None:
                auc = separation(paths, sites)
                if auc:
                    extras.append(f"{name:44} {seed:4d}  changed columns, ROC AUC: rVAE latent {auc['rVAE']:.3f}, "
                                  f"PCA {auc['PCA']:.3f}, NMF {auc['NMF']:.3f}")
            if image is None:
                ratios = ", ".join(f"z{i} {r:.3f}" for i, r in enumerate(disentanglement(paths)))
                extras.append(f"{name:44} {seed:4d}  between-grain / within-grain variance: {ratios}")
    for line in extras:
        print(line)



if __name__ == "__main__":
    main()
