"""Channels of a spectrum image ``(y, x, energy)``: each a sum over an energy band.

Bands are written ``lo:hi`` in the energy axis' units, comma-separated for several channels,
e.g. ``"1.2:1.6,6.2:6.6"`` (keV) for two elemental maps as the two channels of every window.
"""
import numpy as np
import xarray as xr


def parse_bands(text):
    """``"a:b,c:d"`` -> ``[(a, b), (c, d)]`` with ``a < b``."""
    bands = []
    for part in (p.strip() for p in str(text).split(",") if p.strip()):
        try:
            lo, hi = (float(v) for v in part.split(":"))
        except ValueError:
            raise ValueError(f"--channels {part!r} is not an energy band 'lo:hi' (e.g. 1.2:1.6)") from None
        if not lo < hi:
            raise ValueError(f"--channels {part!r}: the band's start must be below its end")
        bands.append((lo, hi))
    if not bands:
        raise ValueError("--channels is empty; give energy bands like 1.2:1.6,6.2:6.6")
    return bands


def select_channels(cube, text):
    """The cube ``(y, x, channel)`` (float32, lazy): one channel per band, summed over its energies."""
    energy = cube["energy"]
    parts = []
    for lo, hi in parse_bands(text):
        band = cube.sel(energy=slice(lo, hi))
        if band.sizes["energy"] == 0:
            raise ValueError(f"--channels band {lo:g}:{hi:g} holds no energy channel (the axis runs from "
                             f"{float(energy[0]):g} to {float(energy[-1]):g} {energy.attrs.get('units', '')})")
        parts.append(band.sum("energy", dtype=np.float32))
    labels = [f"{lo:g}:{hi:g}" for lo, hi in parse_bands(text)]
    stacked = xr.concat(parts, dim="channel").assign_coords(channel=("channel", labels, {
        "long_name": f"energy band ({energy.attrs.get('units', '')})"}))
    return stacked.transpose("y", "x", "channel").rename(cube.name)
