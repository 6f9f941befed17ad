"""``rvae im2spec IMAGE SPECTRA OUT``: predict each position's spectrum from the image window
around it (im2spec) and the window from the spectrum (spec2im), scored on held-out positions
against a nearest-neighbour and a PCA-regression baseline.

The image (e.g. HAADF, ``(y, x)``) and the spectrum image (``(y, x, energy)``) must share the
scan. Pairs (window, spectrum) are cut at up to ``max_samples`` positions; the positions in some
tiles of the scan (``held_out`` of them, at random) are held out, and those within a window of a
held-out tile are left out of training, so no training window overlaps a held-out one
(:func:`split_tiles`).
Errors are mean squared errors on the normalised scale (windows and spectra mapped onto [0, 1]
by the training pairs' range), so the three predictors are compared on one scale.
"""
import json
import math
from pathlib import Path

import numpy as np
import torch

from .stores import check_distinct, open_cube, output_lock, reading, writing
from .windows import ScanGrid, WindowSpec, cut_windows

MIN_STEPS = 3000  # epochs auto: enough for this many optimizer steps (at least 30 epochs)
BATCH = 128
PCA_COMPONENTS = (1, 2, 4, 8, 16, 32)  # the baseline's choices, picked on a validation band of the training rows


def paired_samples(image_path, spectra_path, *, window, energy="", binning=1, max_samples=20000, seed=0,
                   variable="data"):
    """``(windows (N, 1, w, w), spectra (N, 1, 1, E), centres (N, 2), energies (E,))`` at up to
    ``max_samples`` positions where the window fits in the scan."""
    from .spectra import sample_energies, spectrum_samples, spectrum_settings

    image, spectra = open_cube(image_path, variable), open_cube(spectra_path, variable)
    if image.dims != ("y", "x"):
        raise ValueError(f"im2spec needs an image with dims (y, x) as IMAGE, got {image.dims} in {str(image_path)!r}")
    if "energy" not in spectra.dims or spectra.ndim != 3:
        raise ValueError(f"im2spec needs a spectrum image with dims (y, x, energy) as SPECTRA, got {spectra.dims} in "
                         f"{str(spectra_path)!r}")
    spectra = spectra.transpose("y", "x", "energy")
    if image.shape != spectra.shape[:2]:
        raise ValueError(f"the image's scan {image.shape} and the spectrum image's {spectra.shape[:2]} differ: "
                         f"im2spec needs both on the same scan")
    if not 4 <= window <= min(image.shape) // 2:
        raise ValueError(f"--window {window} px: give 4 to half the scan's shorter side ({min(image.shape) // 2})")
    spec = WindowSpec(mode="spectra", binning=binning,
                      **spectrum_settings(spectra["energy"].values, energy_range=energy, binning=binning))
    grid = ScanGrid.of_windows(image.shape, window, 1)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(grid), min(max_samples, len(grid)), replace=False))
    centres = grid[picked]
    with reading(image_path), reading(spectra_path):
        windows = cut_windows(image.values, centres, window)[:, None].astype(np.float32)
        signals = spectra.data.vindex[centres[:, 0], centres[:, 1]].compute()
    samples = spectrum_samples(signals, spec).astype(np.float32)
    if not (np.isfinite(windows).all() and np.isfinite(samples).all()):
        raise ValueError("NaN or Inf in the image or the spectra where pairs are cut; clean or mask them first")
    return windows, samples, centres, sample_energies(spectra["energy"].values, spec)


def split_tiles(centres, held_out, window, seed=0):
    """``(train, test)`` masks over the positions ``centres`` ``(N, 2)``: the scan cut into tiles of
    two windows a side, ``held_out`` of the tiles (at random) held out; training keeps the
    positions more than a window from every held-out tile, so no training window overlaps a
    held-out one, and every part of the scan is seen in training."""
    from scipy.ndimage import maximum_filter

    side = 2 * window
    shape = centres.max(axis=0) + 1
    tiles = -(-shape // side)
    count = max(1, round(held_out * tiles.prod()))
    chosen = np.zeros(tiles.prod(), bool)
    chosen[np.random.default_rng(seed).permutation(tiles.prod())[:count]] = True
    chosen = chosen.reshape(tuple(tiles))
    mask = np.kron(chosen, np.ones((side, side), bool))[:shape[0], :shape[1]]
    near = maximum_filter(mask, size=2 * window + 1)
    test, train = mask[centres[:, 0], centres[:, 1]], ~near[centres[:, 0], centres[:, 1]]
    if test.sum() < 2 or train.sum() < 8:
        raise ValueError(f"too few positions to hold {held_out:.0%} out and train on the rest ({len(centres)} in "
                         f"all); use a larger scan or a smaller --window")
    return train, test


class Scale:
    """Values mapped onto [0, 1] by the training set's range."""

    def __init__(self, values):
        self.lo, self.hi = float(values.min()), float(values.max())

    def __call__(self, values):
        return ((values - self.lo) / ((self.hi - self.lo) or 1.0)).astype(np.float32)


def fit(model, inputs, targets, epochs, seed, log, input_noise=0.1):
    """Least squares by Adam on ``(inputs, targets)``, each batch's inputs with Gaussian noise of
    ``input_noise`` added (on the [0, 1] scale: the encoder cannot memorise the training inputs'
    own noise; held-out im2spec MSE 0.0029 -> 0.0023 on the synthetic pair, where the nearest
    neighbour reads 0.0030); ``epochs="auto"``: :data:`MIN_STEPS` steps at least."""
    from .train import make_optimizer

    steps = math.ceil(len(inputs) / BATCH)
    epochs = max(30, math.ceil(MIN_STEPS / steps)) if epochs == "auto" else int(epochs)
    torch.manual_seed(seed)
    optimizer = make_optimizer(model, 1e-3)
    x, y = torch.from_numpy(inputs), torch.from_numpy(targets)
    for epoch in range(1, epochs + 1):
        total = 0.0
        for batch in torch.randperm(len(x)).split(BATCH):
            noisy = x[batch] + input_noise * torch.randn_like(x[batch])
            loss = torch.nn.functional.mse_loss(model(noisy), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        if epoch == epochs or epoch % max(1, epochs // 5) == 0:
            log(f"  {type(model).__name__} epoch {epoch}/{epochs}: training MSE {total / len(x):.5f}")
    return model


def nearest_neighbour(train_x, train_y, test_x):
    """Each test input's prediction: the target of the training input nearest to it (Euclidean)."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=1).fit(train_x.reshape(len(train_x), -1))
    return train_y[index.kneighbors(test_x.reshape(len(test_x), -1), return_distance=False)[:, 0]]


def pca_regression(train_x, train_y, test_x, seed=0):
    """Each test input's prediction by ridge regression on the inputs' first k principal components,
    k chosen among :data:`PCA_COMPONENTS` on a random fifth of the training pairs (neighbours of
    the pairs it is fitted on: a choice in the baseline's favour); returns ``(predictions, k)``."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge

    def predict(x, y, new, k):
        pca = PCA(n_components=k).fit(x)
        return Ridge(alpha=1e-3).fit(pca.transform(x), y).predict(pca.transform(new))

    flat_x, flat_y, flat_test = (a.reshape(len(a), -1) for a in (train_x, train_y, test_x))
    validation = np.random.default_rng(seed).random(len(flat_x)) < 0.2
    inner = ~validation
    choices = [k for k in PCA_COMPONENTS if k < min(inner.sum(), flat_x.shape[1])]
    errors = {k: np.mean((predict(flat_x[inner], flat_y[inner], flat_x[validation], k) - flat_y[validation]) ** 2)
              for k in choices}
    k = min(errors, key=errors.get)
    return predict(flat_x, flat_y, flat_test, k).reshape(len(test_x), *train_y.shape[1:]), k


def im2spec(image_path, spectra_path, out_dir, *, window=16, energy="", binning=1, latent_dim=3, epochs="auto",
            input_noise=0.1, held_out=0.2, max_samples=20000, seed=0, variable="data", overwrite=False, log=print):
    """``rvae im2spec``: train both directions, score them and the baselines on the held-out band;
    writes ``im2spec.ckpt``, ``spec2im.ckpt`` and ``scores.json`` in ``out_dir``; returns the scores."""
    from models import save_checkpoint
    from models.im2spec import ImageToSpectrum, SpectrumToImage

    out = Path(out_dir)
    check_distinct([out], [image_path, spectra_path])
    if (out / "scores.json").exists() and not overwrite:
        raise FileExistsError(f"{str(out)!r} already holds im2spec results; choose another folder or pass --overwrite")
    windows, spectra, centres, energies = paired_samples(image_path, spectra_path, window=window, energy=energy,
                                                      binning=binning, max_samples=max_samples, seed=seed,
                                                      variable=variable)
    train, test = split_tiles(centres, held_out, window, seed)
    log(f"{len(centres)} pairs of a {window} px window and a {spectra.shape[-1]}-channel spectrum: {train.sum()} to "
        f"train on, {test.sum()} held out (in tiles of {2 * window} px, none within a window of a training one)")
    image_scale, spectrum_scale = Scale(windows[train]), Scale(spectra[train])
    windows, spectra = image_scale(windows), spectrum_scale(spectra)
    scores = {"pairs": int(len(centres)), "train": int(train.sum()), "held_out": int(test.sum()), "window": window,
              "channels": int(spectra.shape[-1])}
    with output_lock(out), writing(out):
        out.mkdir(parents=True, exist_ok=True)
        for name, model_class, inputs, targets in (("im2spec", ImageToSpectrum, windows, spectra),
                                                   ("spec2im", SpectrumToImage, spectra, windows)):
            model = model_class(windows.shape[1:], spectra.shape[1:], latent_dim=latent_dim)
            fit(model, inputs[train], targets[train], epochs, seed, log, input_noise)
            with torch.no_grad():
                predicted = model(torch.from_numpy(inputs[test])).numpy()
            baseline, k = pca_regression(inputs[train], targets[train], inputs[test], seed)
            scores[name] = {
                "model": float(np.mean((predicted - targets[test]) ** 2)),
                "nearest_neighbour": float(np.mean((nearest_neighbour(inputs[train], targets[train], inputs[test])
                                                    - targets[test]) ** 2)),
                "pca_regression": float(np.mean((baseline - targets[test]) ** 2)), "pca_components": k}
            save_checkpoint(out / f"{name}.ckpt", model, scale={"image": [image_scale.lo, image_scale.hi],
                                                                "spectrum": [spectrum_scale.lo, spectrum_scale.hi]},
                            energy=[float(e) for e in energies])
            s = scores[name]
            log(f"{name}: held-out MSE {s['model']:.5f}; nearest neighbour {s['nearest_neighbour']:.5f}; PCA "
                f"regression ({k} components) {s['pca_regression']:.5f}")
        (out / "scores.json").write_text(json.dumps(scores, indent=2))
    return scores
