"""The shift-invariant VAE family for spectra, as a Pyro module: the 1-D rVAE.

A spectrum's analogue of an image's in-plane rotation is a shift along the energy axis (a
chemical shift, the spectrometer's drift, a plasmon moving with thickness). One latent
(``shift``, in half-spectra: a shift of ``s`` moves the spectrum by ``s * E / 2`` channels)
absorbs it; the rest (``z``) describe the spectrum's shape. Without the shift it is a plain
VAE; with ``num_classes`` labels join the decoder's code (cVAE). Samples are ``(B, C, 1, E)``,
the rows of channels the spectra patch mode makes, so the same readers, training loop and
encode stage carry them. ``loss(x)`` is a differentiable -ELBO per sample, like
:class:`models.RVAE`'s.
"""
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from pyro.nn import PyroModule
from torch.nn import functional as F

from .encoders import ENCODERS
from .spectral_decoders import SPECTRAL_DECODERS

SPECTRAL_LIKELIHOODS = ("gaussian", "poisson", "bernoulli")
DEFAULT_HIDDEN = {"warp": (256, 256), "spatial": (96, 96, 96), "broadcast": ()}


class SpectrumVAE(PyroModule):
    """Shift-invariant VAE over spectra ``(B, C, 1, E)``.

    Parameters
    ----------
    image_shape : ``(C, 1, E)`` of a sample.
    latent_dim : shape latents ``z``. shift : whether a shift latent is used (the shift-VAE).
    num_classes : > 0 makes the decoder class-conditional (labels passed, cVAE).
    decoder : ``"warp"`` (a canonical spectrum shifted by resampling), ``"spatial"`` (an MLP of
        the channel coordinate) or ``"broadcast"`` (1-D convolutions); encoder : ``"mlp"`` or ``"conv"``.
    likelihood : ``"gaussian"`` (``noise_scale``; None learns it), ``"poisson"`` (counts: a
        sample ``x`` holds ``x * count_scale + count_offset`` counts) or ``"bernoulli"``.
    shift_prior : width of the shift's zero-mean Gaussian prior, half-spectra.
    """

    kind = "spectrum"
    rotation = translation = False  # no image angle, no image shift: what image-only code asks

    def __init__(self, image_shape, *, latent_dim=2, shift=True, num_classes=0, decoder="warp", encoder="mlp",
                 likelihood="gaussian", noise_scale=0.1, shift_prior=0.1, hidden=None, count_scale=1.0,
                 count_offset=0.0, kind="spectrum"):
        super().__init__()
        if decoder not in SPECTRAL_DECODERS:
            raise ValueError(f"decoder={decoder!r} is not one of {sorted(SPECTRAL_DECODERS)}")
        if encoder not in ENCODERS:
            raise ValueError(f"encoder={encoder!r} is not one of {sorted(ENCODERS)}")
        if likelihood not in SPECTRAL_LIKELIHOODS:
            raise ValueError(f"likelihood={likelihood!r} is not one of {list(SPECTRAL_LIKELIHOODS)}")
        if likelihood == "poisson" and (count_scale <= 0 or count_offset < 0):
            raise ValueError("a poisson likelihood needs samples that are counts (count_scale > 0, count_offset >= 0)")
        hidden = DEFAULT_HIDDEN[decoder] if hidden is None else hidden
        self.config = dict(
            kind="spectrum", image_shape=tuple(int(s) for s in image_shape), latent_dim=latent_dim, shift=bool(shift),
            num_classes=num_classes, decoder=decoder, encoder=encoder, likelihood=likelihood,
            noise_scale=noise_scale, shift_prior=shift_prior, hidden=tuple(hidden), count_scale=float(count_scale),
            count_offset=float(count_offset))
        self.image_shape = self.config["image_shape"]
        self.latent_dim, self.shift, self.num_classes = latent_dim, bool(shift), num_classes
        self.likelihood = likelihood
        self.infers_class = False
        self.encoder = ENCODERS[encoder](self.image_shape, 2 * self.encoded_dim)
        decoder_kwargs = {"hidden": tuple(hidden)} if decoder != "broadcast" else {}
        self.decoder = SPECTRAL_DECODERS[decoder](self.image_shape, latent_dim + num_classes, **decoder_kwargs)
        self.register_buffer("support", torch.ones(1, 1, 1, 1), persistent=False)
        self.register_buffer("shift_prior", torch.tensor(float(shift_prior)))
        self.register_buffer("count_scale", torch.tensor(float(count_scale)), persistent=False)
        self.register_buffer("count_offset", torch.tensor(float(count_offset)), persistent=False)
        if likelihood == "gaussian" and noise_scale is None:
            self.log_noise_scale = torch.nn.Parameter(torch.tensor(-2.0))
        else:
            self.register_buffer("log_noise_scale", torch.tensor(float(noise_scale or 1.0)).log())
        self.register_buffer("kl_weight", torch.tensor(1.0), persistent=False)  # as RVAE's: a KL warm-up
        self._elbo = Trace_ELBO()

    @property
    def encoded_dim(self):
        """Length of the encoded vector: ``[shift?, z...]``."""
        return int(self.shift) + self.latent_dim

    @property
    def channels(self):
        """Channels per spectrum (``E``)."""
        return self.image_shape[-1]

    def shift_in_channels(self, shift):
        """A shift latent (half-spectra) in channels."""
        return shift * (self.channels / 2)

    # -- Pyro model and guide ---------------------------------------------------------------
    def model(self, x, y=None):
        batch = x.shape[0]
        with pyro.plate("data", batch):
            with pyro.poutine.scale(scale=self.kl_weight):
                z = pyro.sample("z", dist.Normal(x.new_zeros(batch, self.latent_dim), 1.0).to_event(1))
                shift = pyro.sample("shift", dist.Normal(x.new_zeros(batch), self.shift_prior)) if self.shift else None
            pyro.sample("x", self._likelihood(self.decoder(self._code(z, y), shift)), obs=self._observed(x))

    def guide(self, x, y=None):
        parts = self._split(*self.encode_features(x))
        with pyro.plate("data", x.shape[0]):
            with pyro.poutine.scale(scale=self.kl_weight):
                pyro.sample("z", dist.Normal(*parts["z"]).to_event(1))
                if self.shift:
                    pyro.sample("shift", dist.Normal(*parts["shift"]))

    def loss(self, x, y=None):
        """Differentiable -ELBO, mean per sample."""
        return self._elbo.differentiable_loss(self.model, self.guide, x, y) / x.shape[0]

    def forward(self, x, y=None):
        return self.loss(x, y)

    # -- inference helpers ------------------------------------------------------------------
    def encode_features(self, x):
        """The encoder's ``(loc, scale)`` of the encoded vector ``[shift?, z...]`` (with gradients)."""
        out = self.encoder(x)
        d = self.encoded_dim
        return out[:, :d], F.softplus(out[:, d:2 * d]) + 1e-4

    @torch.no_grad()
    def encode(self, x):
        """Posterior ``(mean, std)`` of the encoded vector ``[shift?, z...]``."""
        return self.encode_features(x)

    @torch.no_grad()
    def decode(self, z, shift=None, y=None):
        """Mean spectra for shape latents ``z`` (or full encoded vectors) at ``shift`` (half-spectra)."""
        if z.shape[-1] == self.encoded_dim and self.shift:
            shift = z[:, 0] if shift is None else shift
            z = z[:, 1:]
        return self.mean_image(self.decoder(self._code(z, y), shift))

    def renderer(self, z, y=None):
        """The decoder's outputs at shape latents ``z`` (class ``y``) as a function of the shift
        (half-spectra), decoded once where the decoder allows (apply :meth:`mean_image` for the data scale)."""
        return self.decoder.renderer(self._code(z, y))

    def reconstruct(self, x, y=None):
        """Decode the posterior mean of ``x``."""
        return self.decode(self.encode(x)[0], y=y)

    def mean_image(self, out):
        """The decoder's output on the data scale."""
        if self.likelihood == "bernoulli":
            return torch.sigmoid(out)
        return F.softplus(out) if self.likelihood == "poisson" else out

    def negative_log_likelihood(self, out, x):
        """Per spectrum: ``-log p(x | decoder output out)`` (``(B,)``), the likelihood the model was trained with."""
        return -self._likelihood(out).log_prob(self._observed(x))

    def _split(self, loc, scale):
        i = int(self.shift)
        parts = {"z": (loc[:, i:], scale[:, i:])}
        if self.shift:
            parts["shift"] = (loc[:, 0], scale[:, 0])
        return parts

    def _code(self, z, y):
        if not self.num_classes:
            return z
        if y is None:
            raise ValueError("this model is class-conditional: pass the labels y")
        return torch.cat([z, F.one_hot(y.long(), self.num_classes).to(z.dtype)], dim=-1)

    def _observed(self, x):
        return x * self.count_scale + self.count_offset if self.likelihood == "poisson" else x

    def _likelihood(self, out):
        if self.likelihood == "bernoulli":
            channels = dist.Bernoulli(logits=out, validate_args=False)
        elif self.likelihood == "poisson":  # counts: the data scale's mean, in counts
            rate = F.softplus(out) * self.count_scale + self.count_offset + 1e-6
            channels = dist.Poisson(rate, validate_args=False)
        else:
            channels = dist.Normal(out, self.log_noise_scale.exp())
        return channels.to_event(3)

