"""Analysing results in xarray: the ``ds.rvae`` accessor on an opened ``results.zarr``.

    import xarray as xr
    import pipeline  # registers ds.rvae
    res = pipeline.open_results("rvae-demo/results.zarr")  # or xr.open_zarr, unchecked
    res.rvae.degrees()                                   # the rotation map in degrees, units and range kept
    res.rvae.circular_mean(region={"y": slice(0, 3)})    # degrees, modulo the lattice's 360/n
    res.rvae.circular_std(by=res.rvae.domains(4))        # per orientation domain
    aligned = res.rvae.remove_offset(region={"x": slice(8, 11)})   # a reference grain's angle becomes 0
    res.rvae.plot()                                      # cyclic colours over (-180/n, 180/n]

Angles of an n-fold symmetric lattice are defined modulo 2 pi / n: every statistic here is
circular on that period (the mean direction of exp(i n angle), divided by n), so a grain that
straddles the wrap is not averaged to zero. Grid and frames results are maps on ``(y, x)``;
points results are a list of atom columns along ``sample`` with ``y``/``x`` coordinates (not a
grid, so not indexable by ``.sel(x=...)``): :meth:`RVAEAccessor.region` selects a rectangle in both.
"""
import numpy as np
import xarray as xr

from .evaluate import circular_error
from .results import missing_values, wrap_angle


def circular_mean(angle, symmetry=1, axis=None):
    """Mean direction of angles (radians) modulo ``2 pi / symmetry``, NaN ignored."""
    z = np.nanmean(np.exp(1j * symmetry * np.asarray(angle, dtype=float)), axis=axis)
    return np.angle(z) / symmetry


def circular_std(angle, symmetry=1, axis=None):
    """Circular standard deviation (radians) modulo ``2 pi / symmetry``: sqrt(-2 ln R) / n."""
    r = np.abs(np.nanmean(np.exp(1j * symmetry * np.asarray(angle, dtype=float)), axis=axis))
    return np.sqrt(-2 * np.log(np.clip(r, 1e-12, 1))) / symmetry


@xr.register_dataset_accessor("rvae")
class RVAEAccessor:
    def __init__(self, ds):
        self._ds = ds

    @property
    def symmetry(self):
        return int(self._ds.attrs.get("symmetry", 1))

    @property
    def points(self):
        return "sample" in self._ds["recon_error"].dims

    def _check(self):
        """Refuse results that are unfinished or have gaps: every statistic would be over part of them."""
        if self._ds.attrs.get("complete") is not True:
            raise ValueError("these results are unfinished (their attrs do not say complete=true): run the same rvae "
                             "encode again to finish them (pipeline.open_results(path) says how far they got)")
        missing = missing_values(self._ds)
        if missing:
            raise ValueError(f"{missing[1]} values of {missing[0]!r} are missing (NaN): a lost or damaged chunk? "
                             f"pipeline.open_results(path) checks the store")

    def _angle(self):
        if "angle" not in self._ds:
            raise ValueError("these results have no angle (a model trained without rotation)")
        self._check()
        return self._ds["angle"]

    def degrees(self, name="angle"):
        """``angle`` (or ``angle_std``) in degrees, with ``units`` and ``valid_range`` to match."""
        da = self._ds[name]
        attrs = {**da.attrs, "units": "degree"}
        if "valid_range" in attrs:
            attrs["valid_range"] = [float(np.degrees(v)) for v in attrs["valid_range"]]
        return xr.apply_ufunc(np.degrees, da, dask="allowed", keep_attrs=False).assign_attrs(attrs)

    def region(self, **bounds):
        """The results inside a rectangle of physical coordinates, e.g. ``region(y=slice(0, 3))``,
        for maps and for points alike."""
        if not self.points:
            return self._ds.sel(**bounds)
        keep = np.ones(self._ds.sizes["sample"], dtype=bool)
        for dim, bound in bounds.items():
            values = self._ds[dim].values
            keep &= (values >= (bound.start if bound.start is not None else -np.inf)) & \
                    (values <= (bound.stop if bound.stop is not None else np.inf))
        return self._ds.isel(sample=np.flatnonzero(keep))

    def _reduce(self, stat, region=None, where=None, by=None):
        self._angle()  # checked whole, before a region or mask leaves gaps on purpose
        ds = self._ds if region is None else self.region(**region)
        angle = ds["angle"]
        if where is not None:
            angle = angle.where(where)
        if by is None:
            return float(np.degrees(stat(angle.values, self.symmetry)))
        if not isinstance(by, xr.DataArray) or any(by.sizes.get(d, n) != n for d, n in angle.sizes.items()) \
                or not set(by.dims) <= set(angle.dims):
            raise ValueError(f"by= must be a DataArray of labels on the angle's dims {dict(angle.sizes)} "
                             f"(e.g. ds.rvae.domains(n)); got "
                             f"{dict(by.sizes) if hasattr(by, 'sizes') else type(by).__name__}")
        labels = by.broadcast_like(angle).values.ravel()
        values = angle.values.ravel()
        found = np.unique(labels[~np.isnan(labels)] if labels.dtype.kind == "f" else labels)
        return {label.item(): float(np.degrees(stat(values[labels == label], self.symmetry))) for label in found}

    def circular_mean(self, region=None, where=None, by=None):
        """Circular mean angle in degrees (modulo 360/n) over the results, a ``region`` (bounds as
        in :meth:`region`), a boolean ``where`` mask, or per label of ``by`` (a dict)."""
        return self._reduce(circular_mean, region, where, by)

    def circular_std(self, region=None, where=None, by=None):
        """Circular standard deviation in degrees, over the same choices as :meth:`circular_mean`."""
        return self._reduce(circular_std, region, where, by)

    def remove_offset(self, region=None, angle=None):
        """The results with one global rotation removed: the circular mean over a reference
        ``region`` (or a given ``angle`` in degrees) becomes 0; angles wrapped again."""
        if (region is None) == (angle is None):
            raise ValueError("give either a reference region or a reference angle (degrees)")
        offset = np.radians(angle) if angle is not None else np.radians(self.circular_mean(region=region))
        shifted = xr.apply_ufunc(wrap_angle, self._angle() - offset, kwargs={"symmetry": self.symmetry}, dask="allowed")
        return self._ds.assign(angle=shifted.assign_attrs(self._angle().attrs))

    def against_reference(self):
        """The rVAE's angle minus the classical reference's (``reference_angle``, the local-FFT
        orientation) in degrees, circular modulo the lattice's period, after one global offset:
        near 0 where the two agree."""
        if "reference_angle" not in self._ds:
            raise ValueError("these results have no classical reference (the patch store found no lattice)")
        n = int(self._ds["reference_angle"].attrs.get("symmetry", self.symmetry))
        angle = self._angle()
        error, _ = circular_error(angle.values, self._ds["reference_angle"].values, n)
        return xr.DataArray(np.degrees(error), dims=angle.dims, coords=angle.coords,
                            attrs={"units": "degree",
                                   "long_name": "rVAE angle - classical reference angle (offset removed)"})

    def disagreement(self, tiles=8, floor=1.0, spread=4.0, least=5):
        """Where the rVAE's map and the classical reference disagree: ``(regions, tolerance)``.

        The scan is cut into ``tiles`` x ``tiles`` tiles; a tile disagrees when the median of
        ``|angle - reference|`` (after one global offset, :meth:`against_reference`) over its
        positions (``least`` or more) exceeds the tolerance: ``spread`` times the median absolute
        difference over the whole map, and at least ``floor`` degrees. Touching tiles that
        disagree form a region: a dict of its ``y`` and ``x`` bounds (physical units), tiles,
        positions and median difference (degrees); largest first."""
        from scipy import ndimage

        difference = np.abs(self.against_reference().values.ravel())
        y, x = (self._ds[dim].broadcast_like(self._ds["recon_error"]).values.ravel() for dim in ("y", "x"))
        tolerance = max(floor, spread * float(np.nanmedian(difference)))
        y_edges, x_edges = (np.linspace(v.min(), v.max(), tiles + 1) for v in (y, x))
        row = np.clip(np.searchsorted(y_edges, y, side="right") - 1, 0, tiles - 1)
        col = np.clip(np.searchsorted(x_edges, x, side="right") - 1, 0, tiles - 1)
        tile = row * tiles + col
        bad = np.zeros(tiles * tiles, bool)
        for t in np.unique(tile):
            inside = tile == t
            bad[t] = inside.sum() >= least and np.median(difference[inside]) > tolerance
        labels, count = ndimage.label(bad.reshape(tiles, tiles))
        regions = []
        for k in range(1, count + 1):
            rows, cols = np.nonzero(labels == k)
            inside = np.isin(tile, rows * tiles + cols)
            regions.append({"y": (float(y_edges[rows.min()]), float(y_edges[rows.max() + 1])),
                            "x": (float(x_edges[cols.min()]), float(x_edges[cols.max() + 1])), "tiles": len(rows),
                            "positions": int(inside.sum()), "median_deg": float(np.median(difference[inside]))})
        return sorted(regions, key=lambda r: -r["positions"]), tolerance

    def domains(self, n, iterations=50):
        """Orientation domains: ``n`` clusters of the angle on its circle (k-means on
        ``(cos n angle, sin n angle)``, started from evenly spaced angles); labels 0..n-1 ordered by
        angle, NaN where there is no angle."""
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"domains(n): n is the number of orientation domains, an integer >= 1 (got {n!r})")
        angle = self._angle()
        values = angle.values.ravel()
        finite = np.isfinite(values)
        points = np.exp(1j * self.symmetry * values[finite])
        centres = np.exp(1j * np.linspace(-np.pi, np.pi, n, endpoint=False) + 1j * np.pi / n)
        for _ in range(iterations):
            label = np.argmin(np.abs(points[:, None] - centres[None, :]), axis=1)
            moved = np.array([points[label == k].mean() if (label == k).any() else centres[k] for k in range(n)])
            if np.allclose(moved, centres):
                break
            centres = moved
        order = np.argsort(np.argsort(np.angle(centres)))
        labels = np.full(values.shape, np.nan)
        labels[finite] = order[label]
        return xr.DataArray(labels.reshape(angle.shape), dims=angle.dims, coords=angle.coords,
                            attrs={"long_name": "orientation domain", "units": "1"})

    def plot(self, ax=None, **kwargs):
        """The rotation map in degrees with a cyclic colour map spanning the symmetry's range."""
        import matplotlib.pyplot as plt

        half = 180 / self.symmetry
        style = {"cmap": "twilight", "vmin": -half, "vmax": half, **kwargs}
        angle = self.degrees()
        if not self.points:
            return angle.plot(ax=ax, **style)
        ax = ax or plt.gca()
        drawn = ax.scatter(self._ds["x"], self._ds["y"], c=angle, s=style.pop("s", 6), **style)
        units = {dim: self._ds[dim].attrs.get("units", "") for dim in ("x", "y")}
        ax.set(xlabel=f"x ({units['x']})", ylabel=f"y ({units['y']})",
               aspect="equal")
        ax.invert_yaxis()
        plt.colorbar(drawn, ax=ax, label="rotation (degree)")
        return drawn

    def model(self):
        """The trained model that encoded these results, from the checkpoint they name, after
        checking it is the same file (its SHA-256)."""
        from models import load_checkpoint

        from .provenance import file_sha256

        checkpoint = self._ds.attrs.get("checkpoint")
        if not checkpoint:
            raise ValueError("these results name no checkpoint")
        if file_sha256(checkpoint) != self._ds.attrs.get("checkpoint_sha256"):
            raise ValueError(f"checkpoint {checkpoint!r} changed since the results were encoded")
        return load_checkpoint(checkpoint)[0]

    def decoded_spectra(self, n=7):
        """Spectra decoded along each latent (results of spectra): ``z_i`` over its encoded 5th-95th
        percentile in ``n`` steps, the other latents at their median, no shift; a DataArray
        ``(latent, step, energy)`` on the data scale the model was trained on (normalised), with the
        patch store's energy coordinate where it is still there."""
        import torch

        from .stores import open_store

        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"decoded_spectra(n): n is the number of spectra per latent, an integer >= 1 (got {n!r})")
        self._check()
        model = self.model()
        if model.kind != "spectrum":
            raise ValueError("these results are not of spectra: decoded_spectra needs a shift-VAE's results "
                             "(rvae patches --mode spectra); manifold() draws an rVAE's")
        z = self._ds["z"].values.reshape(self._ds.sizes["latent"], -1).T
        z = z[np.isfinite(z).all(axis=1)]
        latent = z.shape[1]
        low, high = np.percentile(z, [5, 95], axis=0)
        codes = np.repeat(np.repeat(np.median(z, axis=0)[None, None], latent, 0), n, 1)
        for i in range(latent):
            codes[i, :, i] = np.linspace(low[i], high[i], n)
        decoded = model.decode(torch.tensor(codes.reshape(-1, latent), dtype=torch.float32),
                               shift=torch.zeros(latent * n) if model.shift else None)
        spectra = decoded.numpy().reshape(latent, n, -1)
        along = codes[np.arange(latent), :, np.arange(latent)]  # (latent, step): the value each varies
        coords = {"latent": np.arange(latent), "z": (("latent", "step"), along)}
        try:
            energy = open_store(self._ds.attrs["patches"], what="patch store")["energy"]
            if energy.size == spectra.shape[-1]:
                coords["energy"] = ("energy", energy.values, dict(energy.attrs))
        except (OSError, ValueError, KeyError):
            pass  # the patch store is gone: channels only
        return xr.DataArray(spectra, dims=("latent", "step", "energy"), coords=coords,
                            attrs={"long_name": "decoded spectrum (normalised)", "units": "1"})

    def manifold(self, n=8):
        """The decoded latent manifold ``(image, extent)`` over the encoded latents' range (angle 0)."""
        from models import manifold2d

        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"manifold(n): n is the number of images per side, an integer >= 1 (got {n!r})")
        self._check()
        z = self._ds["z"].values.reshape(self._ds.sizes["latent"], -1).T
        return manifold2d(self.model(), z[np.isfinite(z).all(axis=1)], n=n)
