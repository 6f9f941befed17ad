"""im2spec and spec2im: predict a pixel's spectrum from the image window around it, and back.

Encoder-decoders trained on pairs (window, spectrum) of the same scan position, as pyroVED's
``im2spec``/``spec2im`` are: a deterministic bottleneck of ``latent_dim`` values between a window
encoder and a spectrum decoder (or a spectrum encoder and a window decoder), fitted by least
squares. They reuse this package's encoders and decoders: the conv encoder on windows, the MLP
encoder on spectra, the 1-D ``warp`` decoder (a spectrum decoded on a canvas, unshifted) and the
2-D ``warp`` decoder (an image, unturned).
"""
from torch import nn

from .decoders import WarpDecoder
from .encoders import ENCODERS
from .spectral_decoders import ResampleDecoder


class ImageToSpectrum(nn.Module):
    """Window ``(B, 1, h, w)`` to spectrum ``(B, 1, 1, E)``."""

    kind = "im2spec"

    def __init__(self, window_shape, spectrum_shape, *, latent_dim=3, encoder="conv", hidden=(256, 256),
                 kind="im2spec"):
        super().__init__()
        self.config = dict(kind="im2spec", window_shape=tuple(int(s) for s in window_shape),
                           spectrum_shape=tuple(int(s) for s in spectrum_shape), latent_dim=latent_dim,
                           encoder=encoder, hidden=tuple(hidden))
        self.encoder = ENCODERS[encoder](self.config["window_shape"], latent_dim)
        self.decoder = ResampleDecoder(self.config["spectrum_shape"], latent_dim, hidden=tuple(hidden))

    def forward(self, window):
        return self.decoder(self.encoder(window))


class SpectrumToImage(nn.Module):
    """Spectrum ``(B, 1, 1, E)`` to window ``(B, 1, h, w)``."""

    kind = "spec2im"

    def __init__(self, window_shape, spectrum_shape, *, latent_dim=3, encoder="mlp", hidden=(256, 256),
                 kind="spec2im"):
        super().__init__()
        self.config = dict(kind="spec2im", window_shape=tuple(int(s) for s in window_shape),
                           spectrum_shape=tuple(int(s) for s in spectrum_shape), latent_dim=latent_dim,
                           encoder=encoder, hidden=tuple(hidden))
        self.encoder = ENCODERS[encoder](self.config["spectrum_shape"], latent_dim)
        self.decoder = WarpDecoder(self.config["window_shape"], latent_dim, hidden=tuple(hidden))

    def forward(self, spectrum):
        return self.decoder(self.encoder(spectrum))
