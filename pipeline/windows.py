"""Cutting windows out of an image region, per-window transforms and the recorded normalisation.

Pure NumPy functions of arrays: the patch stage drives them through Dask, the encode stage
block by block while it streams the cube, so both see exactly the same windows.
"""
from dataclasses import asdict, dataclass

import numpy as np


def cut_windows(region, centres, window):
    """Windows ``(N, window, window)`` centred on integer ``centres`` (N, 2) (row, col) of ``region``.

    A window covers ``[c - window // 2, c - window // 2 + window)`` on each axis. Indexing a
    strided view by window start copies whole window rows, far faster than per-pixel indices.
    """
    start = np.asarray(centres, dtype=np.int64) - window // 2
    views = np.lib.stride_tricks.sliding_window_view(region, (window, window), axis=(0, 1))
    return views[start[:, 0], start[:, 1]]


def tapered(windows):
    """Each window less its mean, times a Hann window (in the windows' float type): what a
    Fourier transform of a window sees without the edges' jump."""
    hann = np.outer(np.hanning(windows.shape[-2]), np.hanning(windows.shape[-1]))
    centred = windows - windows.mean(axis=(-2, -1), keepdims=True)
    return centred * hann.astype(windows.dtype if windows.dtype.kind == "f" else float)


def fft_magnitude(windows):
    """``|FFT|`` of each Hann-windowed, mean-subtracted window, zero frequency centred."""
    return np.fft.fftshift(np.abs(np.fft.fft2(tapered(windows))), axes=(-2, -1))


def log_fft_magnitude(windows):
    """``log(1 + |FFT|)`` of each Hann-windowed, mean-subtracted window, zero frequency centred.

    Periodic content then no longer depends on the lattice phase (translation), yet the pattern
    of Bragg peaks still rotates with the lattice.
    """
    return np.log1p(fft_magnitude(windows))


def bin_frames(frames, factor):
    """Sum ``factor`` x ``factor`` detector pixels (frames ``(N, ky, kx)``, cropped to a multiple)
    into float32: ``factor**2`` strided adds, several times faster than NumPy's reduction over
    the two inner axes of a reshaped array (which the encode stage's frames mode waited on)."""
    if factor == 1:
        return frames
    n, ky, kx = frames.shape
    ky, kx = ky - ky % factor, kx - kx % factor
    binned = np.zeros((n, ky // factor, kx // factor), np.float32)
    for i in range(factor):
        for j in range(factor):
            binned += frames[:, i:ky:factor, j:kx:factor]
    return binned


TRANSFORMS = {"none": lambda w: w, "logfft": log_fft_magnitude}


@dataclass(frozen=True)
class WindowSpec:
    """How a sample is made from the cube: window size, transform, binning and normalisation.

    Stored in the patch store's attrs; ``normalised = (value - offset) / scale``.
    """

    mode: str
    window: int = 0
    transform: str = "none"
    binning: int = 1
    channels: str = ""
    offset: float = 0.0
    scale: float = 1.0
    # spectra mode (:mod:`pipeline.spectra`): channels [energy_start, energy_stop), a background
    # fitted on [pre_edge_start, pre_edge_stop) of an axis energy_origin + energy_step * channel
    energy_start: int = 0
    energy_stop: int = 0
    background: str = "none"
    pre_edge_start: int = 0
    pre_edge_stop: int = 0
    energy_origin: float = 0.0
    energy_step: float = 1.0

    @property
    def keeps_dtype(self):
        """Whether samples keep the cube's values (and dtype): no transform, binning or background."""
        return self.transform == "none" and self.binning == 1 and self.background == "none"

    def cut(self, region, centres=None):
        """Samples ``(N, C, h, w)`` before any transform, in the cube's dtype (float32 once binned).

        ``region``: a block of the scan, ``(y, x)``, ``(y, x, channel)`` or (frames mode)
        ``(y, x, ky, kx)``, or (spectra mode) ``(y, x, energy)``, with the samples' ``centres``
        (row, col) relative to it.
        """
        region = np.asarray(region)
        if self.mode in ("frames", "spectra"):  # each position's signal: a frame, or a spectrum
            if isinstance(centres, ScanGrid):  # a rectangle of positions: sliced, no gather
                rows, cols = (slice(r.start, r.stop, r.step) for r in (centres.rows, centres.cols))
                signals = region[rows, cols].reshape(-1, *region.shape[2:])
            else:
                centres = np.asarray(centres)
                signals = region[centres[:, 0], centres[:, 1]]
            if self.mode == "spectra":
                from .spectra import spectrum_samples

                return spectrum_samples(signals, self)
            samples = bin_frames(signals, self.binning)
        else:
            samples = cut_windows(region, np.asarray(centres), self.window)  # (N, [C,] w, w)
        return samples if samples.ndim == 4 else samples[:, None]

    def raw(self, region, centres=None):
        """Transformed (not normalised) samples ``(N, C, h, w)`` float32 (C: the channels, else 1)."""
        return TRANSFORMS[self.transform](self.cut(region, centres).astype(np.float32)).astype(np.float32)

    def sample_shape(self, signal_shape=()):
        """``(h, w)`` of one sample; ``signal_shape`` is a frame's ``(ky, kx)`` in frames mode."""
        if self.mode == "frames":
            return tuple(int(n) // self.binning for n in signal_shape)
        if self.mode == "spectra":  # a row of channels
            return (1, (self.energy_stop - self.energy_start) // self.binning)
        return (self.window, self.window)

    def normalised_by(self, lo, hi, invert=False):
        """This spec with the normalisation that maps ``[lo, hi]`` onto ``[0, 1]`` (onto ``[1, 0]``
        with ``invert``: dark atom columns come out bright, as the rVAE learns them best)."""
        if invert:
            return WindowSpec(**{**asdict(self), "offset": hi, "scale": (lo - hi) or -1.0})
        return WindowSpec(**{**asdict(self), "offset": lo, "scale": (hi - lo) or 1.0})

    def normalise(self, samples):
        """``(samples - offset) / scale`` as float32, computed in float32: float64 temporaries
        doubled the training reader's cost, on the cores the ranks compute on."""
        out = np.subtract(samples, np.float32(self.offset), dtype=np.float32)
        out /= np.float32(self.scale)
        return out

    def samples(self, region, centres=None):
        """Normalised samples, ready for the model."""
        return self.normalise(self.raw(region, centres))

    def to_attrs(self):
        return {f"window_spec_{k}": v for k, v in asdict(self).items()}

    @classmethod
    def from_attrs(cls, attrs):
        prefix = "window_spec_"
        return cls(**{k[len(prefix):]: v for k, v in attrs.items() if k.startswith(prefix)})


@dataclass(frozen=True)
class ScanGrid:
    """Positions (row, col) on a regular grid, kept implicit: ``rows`` x ``cols`` as ranges.

    A large scan has millions of positions; a grid computes the few it is asked for
    (``grid[indices]``, flat row-major indices) and splits into sub-grids by slicing its ranges.
    """

    rows: range
    cols: range

    @classmethod
    def of_windows(cls, shape, window, stride):
        """Centres of the ``window``-px windows at ``stride`` that fit inside an image of ``shape``."""
        ny, nx = ((n - window) // stride + 1 for n in shape)
        first = window // 2
        return cls(range(first, first + ny * stride, stride), range(first, first + nx * stride, stride))

    @property
    def shape(self):
        return (len(self.rows), len(self.cols))

    def __len__(self):
        return len(self.rows) * len(self.cols)

    def __getitem__(self, index):
        """Centres ``(N, 2)`` int64 of flat indices (an int array or a slice)."""
        # a slice spans only its own indices (not an arange of the whole grid, sliced)
        flat = np.arange(*index.indices(len(self))) if isinstance(index, slice) else np.asarray(index, dtype=np.int64)
        r, c = np.divmod(flat, len(self.cols))
        return np.stack([self.rows.start + self.rows.step * r, self.cols.start + self.cols.step * c], -1)

    def __array__(self, dtype=None, copy=None):
        return self[:].astype(dtype or np.int64)

    def __sub__(self, offset):
        """The same grid in a region whose origin is at ``offset`` (row, col)."""
        dr, dc = (int(o) for o in offset)
        return ScanGrid(range(self.rows.start - dr, self.rows.stop - dr, self.rows.step),
                        range(self.cols.start - dc, self.cols.stop - dc, self.cols.step))

    def to_attrs(self):
        return {"grid_rows": [self.rows.start, self.rows.stop, self.rows.step],
                "grid_cols": [self.cols.start, self.cols.stop, self.cols.step], "grid_shape": list(self.shape)}

    @classmethod
    def from_attrs(cls, attrs):
        return cls(range(*attrs["grid_rows"]), range(*attrs["grid_cols"]))


def inside(centres, shape, window):
    """Mask of integer centres whose whole window lies inside an image of ``shape``."""
    start = centres - window // 2
    return np.all((start >= 0) & (start + window <= np.asarray(shape)), axis=1)


def window_bounds(centres, window):
    """The region ``((r0, r1), (c0, c1))`` that holds every window around ``centres``."""
    start = centres.min(axis=0) - window // 2
    stop = centres.max(axis=0) - window // 2 + window
    return (int(start[0]), int(stop[0])), (int(start[1]), int(stop[1]))
