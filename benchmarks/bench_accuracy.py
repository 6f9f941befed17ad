"""Rotation-map accuracy on real and synthetic images, with default settings, against the classical reference.

Real cases: atomap's experimental ADF and ABF STEM images (a perovskite-like lattice, 400x380, GPL-3 test data
fetched by scripts/fetch-test-data.sh), each turned by known angles into four 256x256 regions of one 512x512
image (each region the centre of the image rotated about its centre). Synthetic case: the demo's four-grain
lattice. Each runs the whole chain with the configuration's defaults (``rvae run`` with only ``input`` set; no
window, symmetry, epoch or prior flags), encodes once more with the same model and ``encode.refine: false``
(the encoder's amortized angle), then scores, against the known angles, at every encoded position at least
``--margin`` px (and half a window) from a region border: the rVAE's refined angle (the default), its
amortized angle, and the classical local-FFT reference computed from the same windows, as circular MAE modulo
the lattice's period (its estimated symmetry) after one global offset.
``--windows 32 96 ...`` repeats the ADF case with those windows instead of the automatic one; ``--seeds 0 1 2``
repeats every case with those training seeds (``train.seed``; default 0, the configuration's).

    python benchmarks/bench_accuracy.py --workdir /tmp/bench-accuracy
"""
import argparse
import os
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import ndimage
from scratch import scratch

ANGLES = (0.0, 8.0, -12.0, 21.0)  # degrees, counter-clockwise as displayed, one per quadrant
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


def evaluate(paths, truth, margin, results=None):
    """Positions scored, window, symmetry, and the MAE of the rVAE's and the classical angles in
    ``results`` (default: the run's)."""
    res = xr.open_zarr(results or paths["results"]).load()
    rows = res["row"].values if "row" in res else None
    if rows is None:  # grid results: the window centres
        rows, cols = np.meshgrid(res["y"].values, res["x"].values, indexing="ij")
    else:
        cols = res["col"].values
    rows, cols = np.asarray(rows).round().astype(int).ravel(), np.asarray(cols).round().astype(int).ravel()
    size = truth.shape[0] // 2
    patches = xr.open_zarr(paths["patches"]).attrs
    margin = max(margin, patches.get("window_spec_window", 0) // 2)  # no window crosses a region border
    away = (np.minimum(np.abs(rows - size), np.abs(cols - size)) >= margin) & (rows >= margin) & \
           (cols >= margin) & (rows < truth.shape[0] - margin) & (cols < truth.shape[1] - margin)
    n = int(patches.get("lattice_symmetry", 1))
    true = truth[rows, cols][away]
    found = {"positions": int(away.sum()), "window": patches.get("window_spec_window"), "symmetry": n,
             "rVAE": score(res["angle"].values.ravel()[away], true, n)}
    if "reference_angle" in res:
        found["classical"] = score(res["reference_angle"].values.ravel()[away], true, n)
    return found


def demo_score(paths, results):
    """:func:`evaluate` for the demo, whose truth is the cube's ``true_angle`` (6-fold)."""
    truth = xr.open_zarr(paths["cube"])["true_angle"]
    res = xr.open_zarr(results).load()
    t = truth.sel(y=xr.DataArray(res["y"].values), x=xr.DataArray(res["x"].values), method="nearest").values
    return {"positions": res.sizes["sample"], "window": xr.open_zarr(paths["patches"]).attrs["window_spec_window"],
            "symmetry": 6, "rVAE": score(res["angle"].values, t, 6),
            "classical": score(res["reference_angle"].values, t, 6)}


def amortized(paths):
    """The run's model encoded again without refinement: the encoder's own angles."""
    from pipeline.encode import encode

    out = paths["results"].with_name("results-amortized.zarr")
    encode(paths["cube"], paths["patches"], paths["checkpoint"], out, refine=False, overwrite=True,
           log=lambda line: None)
    return out


def row(name, found, unrefined):
    print(f"{name:22} {found['positions']:9d} {found['window']:>6} {found['symmetry']:2d} {found['rVAE']:11.2f}° "
          f"{unrefined:13.2f}° {found.get('classical', float('nan')):13.2f}°", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=scratch("bench-accuracy"))
    parser.add_argument("--margin", type=int, default=32,
                        help="px from region borders left out of the score (at least half the window)")
    parser.add_argument("--windows", type=int, nargs="*", default=[], help="also run the ADF case with these windows")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds to run every case with")
    args = parser.parse_args()

    from rsciio.hspy import file_reader

    from pipeline.config import RunConfig
    from pipeline.run import demo_config, run

    args.workdir.mkdir(parents=True, exist_ok=True)

    def config_for(name, workdir, window="auto", seed=0):
        return RunConfig.model_validate({"workdir": str(workdir), "input": str(args.workdir / f"{name}.npy"),
                                         "patches": {"window": window}, "train": {"seed": seed}})

    cases = {}
    for name in ("ADF", "ABF"):
        real = file_reader(str(TESTDATA / f"test_{name}_cropped.hdf5"))[0]["data"].astype(np.float32)
        image, truth, _ = rotated_regions(real)
        np.save(args.workdir / f"{name}.npy", image)
        for seed in args.seeds:
            tag = f", seed {seed}" if len(args.seeds) > 1 else ""
            cases[f"real {name}{tag}"] = (config_for(name, args.workdir / f"{name}-{seed}", seed=seed), truth)
            if name == "ADF":
                for window in args.windows:
                    cases[f"ADF, window {window}{tag}"] = (
                        config_for(name, args.workdir / f"ADF-{window}-{seed}", window, seed), truth)
    print(f"{'case':22} {'positions':>9} {'window':>6} {'n':>2} {'rVAE (default)':>12} {'rVAE amortized':>14} "
          f"{'classical':>14}")
    for name, (config, truth) in cases.items():
        paths = run(config, overwrite=True, progress=False, log=lambda line: None)
        found = evaluate(paths, truth, args.margin)
        row(name, found, evaluate(paths, truth, args.margin, amortized(paths))["rVAE"])
    for seed in args.seeds:
        demo = demo_config(args.workdir / f"demo-{seed}")
        demo = demo.model_copy(update={"train": demo.train.model_copy(update={"seed": seed})})
        paths = run(demo, overwrite=True, progress=False, log=lambda line: None)
        tag = f", seed {seed}" if len(args.seeds) > 1 else ""
        row(f"synthetic demo{tag}", demo_score(paths, paths["results"]), demo_score(paths, amortized(paths))["rVAE"])


if __name__ == "__main__":
    main()
