"""Spectra as samples: each scan position's spectrum over an energy range, its background
optionally removed, optionally binned (``rvae patches --mode spectra``).

The range and the pre-edge window are given in the energy axis' units (eV, nm, cm-1, ...) and
resolved here, once, to channel indices that the :class:`~pipeline.windows.WindowSpec` records;
every reader then makes the same samples from the same channels.
"""
import numpy as np


def channel_range(energy, text, what="--energy"):
    """``(start, stop)`` channel indices of ``"lo:hi"`` (the axis' units, either end may be left
    out) on the increasing coordinate ``energy``; ``""``: the whole axis."""
    values = np.asarray(energy, dtype=float)
    if len(values) > 1 and not np.all(np.diff(values) > 0):
        raise ValueError(f"{what} needs an energy axis that increases; this one does not")
    if not text:
        return 0, len(values)
    try:
        lo, hi = (float(part) if part.strip() else None for part in text.split(":"))
    except ValueError:
        raise ValueError(f"{what} {text!r}: give lo:hi in the energy axis' units, e.g. 400:800") from None
    lo = values[0] if lo is None else lo
    hi = values[-1] if hi is None else hi
    if not np.isfinite([lo, hi]).all() or hi <= lo:
        raise ValueError(f"{what} {text!r}: lo must be below hi")
    start, stop = int(np.searchsorted(values, lo, side="left")), int(np.searchsorted(values, hi, side="right"))
    if stop - start < 2:
        raise ValueError(f"{what} {text!r} holds {max(stop - start, 0)} channel(s) of the energy axis "
                         f"({values[0]:g} to {values[-1]:g}); choose a range inside it")
    return start, stop


def powerlaw_background(pre_edge, pre_energy, energy):
    """``A E^-r`` fitted to each spectrum's ``pre_edge`` counts ``(N, P)`` at ``pre_energy`` (a
    straight line through log counts against log energy, least squares), evaluated at ``energy``:
    ``(N, len(energy))`` float32. The usual model of the background under an EELS core-loss edge."""
    x = np.log(np.asarray(pre_energy, dtype=np.float64))
    y = np.log(np.maximum(np.asarray(pre_edge, dtype=np.float64), 1e-6))  # an empty channel is not -inf
    dx = x - x.mean()
    slope = (y - y.mean(axis=1, keepdims=True)) @ dx / (dx @ dx)
    intercept = y.mean(axis=1) - slope * x.mean()
    log_energy = np.log(np.asarray(energy, dtype=np.float64))
    return np.exp(intercept[:, None] + slope[:, None] * log_energy[None]).astype(np.float32)


def bin_channels(spectra, factor):
    """Sum ``factor`` neighbouring channels of ``(N, E)`` spectra (cropped to a multiple)."""
    if factor == 1:
        return spectra
    n, channels = spectra.shape
    channels -= channels % factor
    return spectra[:, :channels].reshape(n, channels // factor, factor).sum(axis=2, dtype=np.float32)


def spectrum_samples(spectra, spec):
    """``(N, E)`` spectra over the whole axis to samples ``(N, 1, 1, E')`` as ``spec`` makes them:
    the range, less the fitted background, binned. Kept in the cube's dtype when nothing is computed."""
    out = spectra[:, spec.energy_start:spec.energy_stop]
    if spec.background == "powerlaw":
        axis = spec.energy_origin + spec.energy_step * np.arange(spectra.shape[1])
        pre = slice(spec.pre_edge_start, spec.pre_edge_stop)
        out = out.astype(np.float32) - powerlaw_background(spectra[:, pre], axis[pre],
                                                           axis[spec.energy_start:spec.energy_stop])
    return bin_channels(out, spec.binning)[:, None, None, :]


def sample_energies(energy, spec):
    """The energy of each sample channel ``spec`` makes from the axis ``energy`` (a binned
    channel's mean)."""
    values = np.asarray(energy)[spec.energy_start:spec.energy_stop]
    return values[:len(values) // spec.binning * spec.binning].reshape(-1, spec.binning).mean(axis=1)


def channel_width(energy, spec):
    """The energy one sample channel spans (the axis' units): what a shift of one channel is."""
    values = sample_energies(energy, spec)
    return float((values[-1] - values[0]) / (len(values) - 1))


def spectrum_settings(energy, *, energy_range="", background="none", pre_edge="", binning=1):
    """The :class:`~pipeline.windows.WindowSpec` fields of a spectra mode, resolved on the cube's
    ``energy`` coordinate: channel ranges, and the axis' origin and step for the background's fit."""
    values = np.asarray(energy, dtype=float)
    start, stop = channel_range(values, energy_range)
    if (stop - start) // binning < 2:
        raise ValueError(f"--binning {binning} leaves fewer than 2 channels of the {stop - start} in --energy "
                         f"{energy_range or '(whole axis)'}")
    settings = {"energy_start": start, "energy_stop": stop, "background": background}
    if background == "none":
        if pre_edge:
            raise ValueError("--pre-edge is the window a background is fitted on; it needs --background powerlaw")
        return settings
    if not pre_edge:
        raise ValueError("--background powerlaw needs --pre-edge lo:hi, the window before the edge it is fitted on "
                         "(the energy axis' units)")
    pre_start, pre_stop = channel_range(values, pre_edge, "--pre-edge")
    if values[pre_start] <= 0:
        raise ValueError(f"--background powerlaw fits A E^-r, which needs energies above 0; --pre-edge {pre_edge} "
                         f"starts at {values[pre_start]:g}")
    if values[start] <= 0:
        raise ValueError(f"--background powerlaw is evaluated over --energy, which starts at {values[start]:g}; it "
                         f"needs energies above 0")
    step = np.diff(values)
    if len(step) and not np.allclose(step, step[0], rtol=1e-4):
        raise ValueError("--background powerlaw needs an evenly spaced energy axis")
    return {**settings, "pre_edge_start": pre_start, "pre_edge_stop": pre_stop,
            "energy_origin": float(values[0]), "energy_step": float(step[0]) if len(step) else 1.0}


def detrended(spectra):
    """``(N, E)`` spectra less the straight line through their first and last channels: they then
    end at 0, and zero-padding adds no step (an edge's rise would otherwise dominate the
    correlation, which then prefers the lag that best overlaps the padding)."""
    ramp = np.linspace(0.0, 1.0, spectra.shape[-1])
    return spectra - spectra[:, :1] - (spectra[:, -1:] - spectra[:, :1]) * ramp


def cross_correlation_shift(spectra, reference, max_shift=None):
    """Each spectrum's shift against ``reference`` in channels (positive: towards higher channels),
    the classical estimate (as HyperSpy's ``estimate_shift1D``): the peak of the cross-correlation
    of the spectra less the line through their ends (:func:`detrended`; zero-padded FFTs, ``(N,
    E)`` at once), refined by a parabola
    through the peak and its neighbours; searched within ``max_shift`` channels (default: a quarter
    of the axis)."""
    spectra = np.asarray(spectra, dtype=np.float64)
    n = spectra.shape[-1]
    max_shift = n // 4 if max_shift is None else int(max_shift)
    a, b = detrended(spectra), detrended(np.asarray(reference, dtype=np.float64)[None])[0]
    size = 2 * n
    correlation = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)
    lags = np.r_[0:max_shift + 1, -max_shift:0]
    window = correlation[:, lags]  # lag k: spectrum[i] ~ reference[i - k]
    best = np.clip(window.argmax(axis=1), 0, None)
    centre = lags[best]
    below, at, above = (correlation[np.arange(len(a)), (centre + k) % size] for k in (-1, 0, 1))
    curvature = below - 2 * at + above
    vertex = np.where(curvature < 0, 0.5 * (below - above) / np.where(curvature < 0, curvature, -1), 0.0)
    return centre + np.clip(vertex, -1, 1)


def shift_spectra(spectra, shifts):
    """``(N, E)`` spectra moved by ``shifts`` channels each (linear interpolation; edges held)."""
    channel = np.arange(spectra.shape[-1], dtype=np.float64)
    return np.stack([np.interp(channel - s, channel, spectrum) for spectrum, s in zip(spectra, shifts)])


def classical_shifts(spectra, iterations=3, max_shift=None):
    """``(shifts, reference)``: the classical per-spectrum shift estimate in channels,
    cross-correlation against the mean spectrum (:func:`cross_correlation_shift`), then against
    the mean of the spectra aligned by that estimate, ``iterations`` times in all (a mean of
    unaligned spectra is blurred by their shifts; aligned, it sharpens); and that final mean
    spectrum, what the shifts are relative to."""
    spectra = np.asarray(spectra, dtype=np.float64)
    reference = spectra.mean(axis=0)
    for _ in range(iterations):
        shifts = cross_correlation_shift(spectra, reference, max_shift)
        reference = shift_spectra(spectra, -shifts).mean(axis=0)
    return shifts, reference
