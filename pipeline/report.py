"""The report stage: figures people would rather look at than read, and a short text summary.

Imported by the CLI only; nothing else depends on matplotlib.
"""
import os
from pathlib import Path

import numpy as np

from .results import load_results
from .stores import check_distinct, output_lock, writing


def write_report(results_path, out_dir, *, overwrite=False, log=print):
    """``rvae report``: PNG figures and ``summary.txt`` in ``out_dir``; returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_distinct([out_dir], [results_path])
    results = load_results(results_path)
    out = Path(out_dir)
    spectra = results.attrs.get("mode") == "spectra"
    names = (("shift_map", "latent_maps", "decoded_spectra", "pca_nmf") if spectra else
             ("rotation_map", "reference_map", "latent_maps", "latent_scatter", "manifold", "pca_nmf"))
    figures = {name: out / f"{name}.png" for name in names}
    # a report is finished once its summary is written (last); figures without one are redrawn
    if not overwrite and (out / "summary.txt").exists():
        raise FileExistsError(f"{str(out)!r} already holds a report; choose another directory or pass --overwrite")
    with output_lock(out), writing(out):
        out.mkdir(parents=True, exist_ok=True)
        draw = _draw_spectra if spectra else _draw
        summary = draw(plt, results, figures, log)
        # last, and whole or not at all: a report with its summary is finished (rvae run keeps it)
        staging = out / f".summary.txt.partial-{os.getpid()}"
        staging.write_text(summary, encoding="utf-8", errors="backslashreplace")  # paths need not be UTF-8
        staging.replace(out / "summary.txt")
        log(summary.rstrip())
        return [*figures.values(), out / "summary.txt"]


def _draw(plt, results, figures, log):
    """The rotation, reference and latent maps, the latent space and manifold, PCA/NMF; returns the summary."""
    symmetry = int(results.attrs.get("symmetry", 1))
    points = "sample" in results.dims
    background = _background(results) if points else None

    fig, ax = plt.subplots(figsize=(6, 5))
    if "angle" in results:
        _map(ax, results, np.degrees(results["angle"].values), background, cmap="twilight",
             vmin=-180 / symmetry, vmax=180 / symmetry, label="rotation (deg, counter-clockwise)")
    ax.set_title(f"rotation map (modulo {360 // symmetry} deg)" if symmetry > 1 else "rotation map")
    _save(fig, figures["rotation_map"])

    _latent_maps(plt, results, background, figures["latent_maps"])
    latent = results.sizes["latent"]

    z = results["z"].values.reshape(latent, -1)
    fig, ax = plt.subplots(figsize=(5, 5))
    colour = np.degrees(results["angle"].values.ravel()) if "angle" in results else None
    sc = ax.scatter(z[0], z[1] if latent > 1 else np.zeros_like(z[0]), c=colour, s=3, cmap="twilight")
    if colour is not None:
        fig.colorbar(sc, ax=ax, label="rotation (deg)")
    ax.set(xlabel="z0", ylabel="z1", title="latent space")
    _save(fig, figures["latent_scatter"])

    if not _manifold(plt, results, figures["manifold"], log):
        del figures["manifold"]
    if "reference_angle" in results and "angle" in results:
        _reference(plt, results, background, figures["reference_map"])
    else:
        del figures["reference_map"]
    baseline = _pca_nmf(plt, results, figures["pca_nmf"], log)
    if baseline is None:
        del figures["pca_nmf"]
    return _summary(results, symmetry, baseline)


def _draw_spectra(plt, results, figures, log):
    """A shift-VAE's results: the shift map beside the classical one and their difference, the
    latent maps, spectra decoded along each latent, PCA/NMF components with their score maps;
    returns the summary."""
    _shift_figure(plt, results, figures["shift_map"])

    _latent_maps(plt, results, None, figures["latent_maps"])
    latent = results.sizes["latent"]

    try:
        decoded = results.rvae.decoded_spectra()
    except (OSError, ValueError, TypeError) as err:
        log(f"decoded spectra skipped: {' '.join(str(err).split())[:160]}")
        del figures["decoded_spectra"]
    else:
        energy = decoded["energy"].values if "energy" in decoded.coords else np.arange(decoded.sizes["energy"])
        fig, axes = plt.subplots(1, latent, figsize=(5 * latent, 4), squeeze=False)
        colours = plt.get_cmap("viridis")(np.linspace(0, 1, decoded.sizes["step"]))
        for i, ax in enumerate(axes[0]):
            for k, colour in enumerate(colours):
                ax.plot(energy, decoded.values[i, k], color=colour, lw=1,
                        label=f"z{i} = {float(decoded['z'][i, k]):.2f}" if k in (0, len(colours) - 1) else None)
            ax.set(title=f"decoded along z{i} (no shift)", ylabel="normalised",
                   xlabel=_axis_label(decoded["energy"]) if "energy" in decoded.coords else "channel")
            ax.legend(fontsize=8)
        _save(fig, figures["decoded_spectra"])

    baseline = _pca_nmf_spectra(plt, results, figures["pca_nmf"], log)
    if baseline is None:
        del figures["pca_nmf"]
    return _summary(results, 1, baseline)


def _axis_label(coordinate):
    """``long name (units)`` of a coordinate: an energy axis may hold wavelengths or wavenumbers."""
    return f"{coordinate.attrs.get('long_name', coordinate.name)} ({coordinate.attrs.get('units', '')})"


def _shift_figure(plt, results, path):
    """The shift map beside the classical one and their difference (along the line for a line scan)."""
    units = results["shift"].attrs.get("units", "") if "shift" in results else ""
    panels = [(name, title) for name, title in (("shift", "shift-VAE shift"),
                                                ("reference_shift", "classical: cross-correlation shift"),
                                                ("reference_difference", "shift-VAE - classical (one offset removed)"))
              if name in results]
    if results.sizes.get("y") == 1:  # a line scan
        fig, ax = plt.subplots(figsize=(8, 4))
        for name, title in panels:
            ax.plot(results["x"].values, results[name].values[0], label=title)
        ax.set(xlabel=f"x ({results['x'].attrs.get('units', '')})", ylabel=f"shift ({units})",
               title="shift along the line scan" if panels else "no shift latent (a plain VAE)")
        if panels:
            ax.legend(fontsize=8)
    else:
        fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.3 * max(1, len(panels)), 4.5), squeeze=False)
        for ax, (name, title) in zip(axes[0], panels):
            _map(ax, results, results[name].values, None,
                 cmap="RdBu_r" if name == "reference_difference" else "viridis", label=f"{name} ({units})")
            ax.set_title(title)
        if not panels:
            axes[0, 0].set_title("no shift latent (a plain VAE)")
    _save(fig, path)


def _pca_nmf_spectra(plt, results, path, log):
    """The first two PCA and NMF components of the training spectra, each beside its score map."""
    found = _decompose(results, log)
    if found is None:
        return None
    fig, axes = plt.subplots(4, 2, figsize=(10, 14))
    for row, name in enumerate(("pca", "nmf")):
        for k in range(2):
            line, score = axes[2 * row + k]
            line.plot(found[f"{name}_components"][k])
            line.set(title=f"{name.upper()} component {k + 1}", xlabel="sample channel")
            drawn = score.scatter(found["x"], found["y"], c=found[name][:, k], s=4, cmap="viridis")
            score.set(title=f"{name.upper()} score {k + 1}", aspect="equal")
            score.invert_yaxis()
            fig.colorbar(drawn, ax=score)
    _save(fig, path)
    return found


def _latent_maps(plt, results, background, path):
    """Each latent's map, side by side."""
    latent = results.sizes["latent"]
    fig, axes = plt.subplots(1, latent, figsize=(5 * latent, 4), squeeze=False)
    for i, ax in enumerate(axes[0]):
        _map(ax, results, results["z"].isel(latent=i).values, background, cmap="viridis", label=f"z{i}")
        ax.set_title(f"latent z{i}")
    _save(fig, path)


def _background(results):
    from .stores import open_cube

    try:
        return open_cube(results.attrs["source"]).load()
    except (FileNotFoundError, ValueError, KeyError):
        return None


def _map(ax, results, values, background, label, **style):
    if "sample" in results.dims:  # atom columns: dots over the image
        if background is not None:
            extent = _extent(background["x"].values, background["y"].values)
            ax.imshow(background.values, cmap="gray", extent=extent)
        im = ax.scatter(results["x"].values, results["y"].values, c=values, s=6, **style)
        ax.set_aspect("equal")
        if background is None:
            ax.invert_yaxis()
    else:
        im = ax.imshow(values, extent=_extent(results["x"].values, results["y"].values), **style)
    units = results["x"].attrs.get("units", "")
    ax.set(xlabel=f"x ({units})", ylabel=f"y ({units})")
    ax.figure.colorbar(im, ax=ax, label=label)


def _extent(x, y):
    dx = (x[1] - x[0]) if len(x) > 1 else 1.0
    dy = (y[1] - y[0]) if len(y) > 1 else 1.0
    return (x[0] - dx / 2, x[-1] + dx / 2, y[-1] + dy / 2, y[0] - dy / 2)


def _manifold(plt, results, path, log, n=8):
    """Decoded images on a grid spanning the encoded latents' 5th-95th percentiles (angle 0),
    from the checkpoint the results name, if it is still there and unchanged; returns whether
    the figure was drawn."""
    try:
        mosaic, extent = results.rvae.manifold(n=n)
    except (OSError, ValueError, TypeError) as err:
        log(f"manifold skipped: {' '.join(str(err).split())[:160]}")
        return False
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(mosaic, cmap="gray", extent=extent, aspect="auto")
    ax.set(xlabel="z0", ylabel="z1", title="latent manifold (angle 0)")
    _save(fig, path)
    return True


def _reference(plt, results, background, path):
    """The rVAE's rotation map, the classical local-FFT map beside it, and their circular difference."""
    n = int(results["reference_angle"].attrs.get("symmetry", 1))
    half = 180 / n
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = [(results["angle"], "rVAE rotation"),
              (results["reference_angle"], "classical: local-FFT orientation"),
              (None, "rVAE - classical (one offset removed)")]
    for ax, (angle, title) in zip(axes, panels):
        if angle is None:
            _map(ax, results, results.rvae.against_reference().values, background, cmap="RdBu_r", vmin=-half / 3,
                 vmax=half / 3, label="difference (deg)")
        else:
            _map(ax, results, np.degrees(angle.values), background, cmap="twilight", vmin=-half, vmax=half,
                 label="deg")
        ax.set_title(title)
    _save(fig, path)


def _decompose(results, log):
    """PCA and NMF of the samples the model was trained on (the patch store the results name, if
    it is unchanged), or None when that cannot be done (said in the log)."""
    from .decomposition import decompose
    from .provenance import store_fingerprint

    patches = results.attrs.get("patches")
    try:
        if store_fingerprint(patches, "patches") != results.attrs.get("patches_fingerprint"):
            log(f"PCA/NMF skipped: patch store {patches!r} changed since the results were encoded")
            return None
        return decompose(patches)
    except (OSError, ValueError, KeyError, TypeError) as err:
        log(f"PCA/NMF skipped: {' '.join(str(err).split())[:160]}")
        return None


def _pca_nmf(plt, results, path, log):
    """The first two PCA and NMF components of the windows the rVAE was trained on, drawn where
    those windows were cut; returns the decomposition, or None when it was skipped."""
    found = _decompose(results, log)
    if found is None:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(10, 8.5))
    for row, name in enumerate(("pca", "nmf")):
        for k, ax in enumerate(axes[row]):
            drawn = ax.scatter(found["x"], found["y"], c=found[name][:, k], s=4, cmap="viridis")
            ax.set(title=f"{name.upper()} component {k + 1}", aspect="equal")
            ax.invert_yaxis()
            fig.colorbar(drawn, ax=ax)
    _save(fig, path)
    return found


# Right maps and their classical references differ by a median of 0.1-0.9 deg (docs/bench_accuracy.md, run 3);
# the per-region check is relative to that median, so a map wrong at most positions needs this absolute one.
WHOLE_MAP_DEG = 2.0


def _summary(results, symmetry, baseline=None):
    lines = [f"results: {results.attrs.get('mode')} mode, {results['recon_error'].size} positions, "
             f"{results.sizes['latent']} latents"]
    if "angle" in results:
        lines.append(f"rotation: circular mean {results.rvae.circular_mean():.2f} deg, circular std "
                     f"{results.rvae.circular_std():.2f} deg (modulo {360 / symmetry:g} deg), mean posterior std "
                     f"{np.degrees(np.nanmean(results['angle_std'].values)):.2f} deg")
    if "shift" in results:
        lines += _shift_lines(results)
    lines.append(f"reconstruction error (normalised MSE): mean {float(results['recon_error'].mean()):.4g}")
    if "reference_angle" in results and "angle" in results:
        difference = np.abs(results.rvae.against_reference().values)
        median = np.nanmedian(difference)
        lines.append(f"classical reference (local FFT, {results['reference_angle'].attrs.get('symmetry')}-fold): the "
                     f"rVAE's angle differs by {np.nanmean(difference):.2f} deg on average, median "
                     f"{median:.2f} deg, after one global offset (reference_map.png)")
        if median > WHOLE_MAP_DEG:
            lines.append(f"WARNING: the rVAE's map and the classical reference disagree at most positions (median "
                         f"{median:.1f} deg, more than {WHOLE_MAP_DEG:g}): at least one of them is "
                         f"wrong; do not trust the rotation map without checking it (reference_map.png)")
        regions, tolerance = results.rvae.disagreement()
        if regions:
            units = results["x"].attrs.get("units", "")
            where = "; ".join(f"y {r['y'][0]:.4g} to {r['y'][1]:.4g}, x {r['x'][0]:.4g} to {r['x'][1]:.4g} {units} "
                              f"({r['positions']} positions, median {r['median_deg']:.1f} deg)" for r in regions[:3])
            more = f" and {len(regions) - 3} more" if len(regions) > 3 else ""
            lines.append(f"WARNING: the rVAE's map and the classical reference disagree by more than "
                         f"{tolerance:.1f} deg in {len(regions)} region(s): {where}{more}; do not trust the rotation "
                         f"map there (reference_map.png)")
    if "other_sublattice" in results:
        odd = int(np.nansum(results["other_sublattice"].values))
        if odd:
            share = odd / results["other_sublattice"].size
            lines.append(f"{odd} windows ({share:.1%}) are centred on the lattice's other sublattice: their angles "
                         f"are given in their neighbours' convention (other_sublattice)")
    lines += _degenerate(results, symmetry)
    if baseline is not None:
        explained = ", ".join(f"{v:.1%}" for v in baseline["explained"])
        spectra = results.attrs.get("mode") == "spectra"
        what, lacks = ("spectra", "components and score maps; no shift") if spectra else ("windows", "maps; no angle")
        lines.append(f"PCA of the {len(baseline['pca'])} training {what}: the first components explain {explained} "
                     f"of the variance (pca_nmf.png: PCA and NMF {lacks})")
    lines.append(f"checkpoint: {results.attrs.get('checkpoint')}  git {results.attrs.get('git_commit', '')[:10]}")
    return "\n".join(lines) + "\n"


def _shift_lines(results):
    """A spectrum shift map's summary: its spread, and its agreement with the classical estimate."""
    shift = results["shift"].values
    units = results["shift"].attrs.get("units", "")
    width = abs(float(results["shift"].attrs.get("channel_width", 1.0)))
    low, high = np.nanpercentile(shift, [1, 99])
    lines = [f"shift along energy: mean {np.nanmean(shift):.4g} {units}, std {np.nanstd(shift):.3g} {units}, 1-99% "
             f"{low:.4g} to {high:.4g} {units} (one channel: {width:.3g} {units}); mean posterior std "
             f"{np.nanmean(results['shift_std'].values):.3g} {units}"]
    if "reference_difference" in results:
        difference = np.abs(results["reference_difference"].values)
        median = float(np.nanmedian(difference))
        lines.append(f"classical reference (cross-correlation against the aligned mean spectrum): the shift differs by "
                     f"{np.nanmean(difference):.3g} {units} on average, median {median:.3g} {units}, after one global "
                     f"offset (shift_map.png)")
        if median > width:
            lines.append(f"WARNING: the shift-VAE's map and the classical estimate disagree by more than a channel at "
                         f"most positions (median {median:.3g} {units}): spectra whose shapes differ on one side of a "
                         f"feature move the best-matching shift by themselves, or one map is wrong; check "
                         f"shift_map.png and decoded_spectra.png before trusting either")
    return lines


def _degenerate(results, symmetry, few=50):
    """Warnings for results that cannot mean much: collapsed latents, an angle the posterior does
    not determine, too few windows."""
    warnings = []
    z = results["z"].values.reshape(results.sizes["latent"], -1)
    for i, values in enumerate(z):
        low, high = np.nanpercentile(values, [5, 95])
        if high - low < 1e-3:
            warnings.append(f"WARNING: latent z{i} is the same for every window (5-95% range {high - low:.1e}): it "
                            f"collapsed to its prior and its map and the manifold show nothing")
    if "angle_std" in results:
        period = 360 / symmetry
        spread = float(np.degrees(np.nanmean(results["angle_std"].values)))
        if spread > period / 2:
            warnings.append(f"WARNING: the angle's mean posterior std ({spread:.0f} deg) exceeds half the symmetry's "
                            f"period of {period:g} deg: the encoder does not determine the angle")
    if results["recon_error"].size < few:
        warnings.append(f"WARNING: only {results['recon_error'].size} windows: too few for the maps' statistics to "
                        f"mean much")
    return warnings


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
