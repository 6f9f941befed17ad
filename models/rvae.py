"""The (class-conditional, rotationally invariant) VAE family as Pyro modules.

One latent absorbs the in-plane rotation (``angle``, radians, counter-clockwise as displayed)
and two optional ones a translation (``shift``); the rest (``z``) describe the content.
``loss(x)`` is a differentiable -ELBO per sample, so a plain torch optimizer, torch DDP or
Horovod drive the training without knowing about Pyro.

A discrete class joins the decoder's code when ``num_classes > 0``. With ``classes="given"``
the labels are always passed (cVAE, crVAE); with ``classes="inferred"`` the class is a latent
variable with a uniform prior, summed out exactly by Pyro's enumeration (joint rVAE), and
wherever labels are known (``y >= 0``; ``-1`` marks unknown) they are observed and also train
the classifier (semi-supervised rVAE, Kingma et al.'s M2 objective).
"""
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.nn import PyroModule
from torch.nn import functional as F

from .decoders import DECODERS
from .encoders import ENCODERS
from .geometry import inscribed_disc

LIKELIHOODS = ("bernoulli", "gaussian")
CLASS_MODES = ("given", "inferred")
# Decoder widths by default: the coordinate MLP runs once per pixel, so it is kept narrow: three
# 96-wide layers fit rotated MNIST better than pyroVED's three 128-wide ones at twice their speed
# (benchmarks/bench_models.py); the warp decoder's MLP runs once per image and can afford 256.
DEFAULT_HIDDEN = {"warp": (256, 256), "spatial": (96, 96, 96), "broadcast": ()}


class RVAE(PyroModule):
    """Rotationally invariant VAE (Ziatdinov & Kalinin), with rotation/translation/classes optional.

    Parameters
    ----------
    image_shape : (channels, height, width) of the input windows.
    latent_dim : number of content latents ``z``.
    rotation, translation : whether an angle latent and a ``(dy, dx)`` shift latent are used.
    num_classes : > 0 makes the decoder class-conditional (one-hot label joins the code).
    classes : ``"given"`` (labels always passed) or ``"inferred"`` (a latent class; labels
        optional, ``-1`` where unknown). class_weight : weight of the classifier's
        cross-entropy on labelled samples (semi-supervised training).
    decoder : ``"warp"``, ``"spatial"`` or ``"broadcast"``; encoder : ``"mlp"`` or ``"conv"``.
    likelihood : ``"bernoulli"`` (data in [0, 1]) or ``"gaussian"`` (``noise_scale``; None learns it).
    angle_prior, shift_prior : widths of the zero-mean Gaussian priors (radians, half-windows).
    hidden : decoder MLP widths (warp, spatial); None picks :data:`DEFAULT_HIDDEN` for the decoder.
    disc : encode and score each window's inscribed disc only (rotation-invariant support).
    """

    kind = "image"

    def __init__(self, image_shape, *, latent_dim=2, rotation=True, translation=False,
                 num_classes=0, classes="given", class_weight=50.0, decoder="warp", encoder="mlp",
                 likelihood="bernoulli",
                 noise_scale=0.1, angle_prior=1.0, shift_prior=0.1, hidden=None, disc=False):
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"decoder={decoder!r} is not one of {sorted(DECODERS)}")
        if encoder not in ENCODERS:
            raise ValueError(f"encoder={encoder!r} is not one of {sorted(ENCODERS)}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood={likelihood!r} is not one of {list(LIKELIHOODS)}")
        if classes not in CLASS_MODES:
            raise ValueError(f"classes={classes!r} is not one of {list(CLASS_MODES)}")
        if classes == "inferred" and num_classes < 2:
            raise ValueError("classes='inferred' needs num_classes >= 2")
        hidden = DEFAULT_HIDDEN[decoder] if hidden is None else hidden
        self.config = dict(
            image_shape=tuple(int(s) for s in image_shape), latent_dim=latent_dim,
            rotation=rotation, translation=translation, num_classes=num_classes, classes=classes,
            class_weight=class_weight, decoder=decoder, encoder=encoder, likelihood=likelihood, noise_scale=noise_scale,
            angle_prior=angle_prior, shift_prior=shift_prior, hidden=tuple(hidden), disc=bool(disc))
        self.image_shape = self.config["image_shape"]
        self.latent_dim, self.rotation, self.translation = latent_dim, rotation, translation
        self.num_classes, self.likelihood = num_classes, likelihood
        self.infers_class, self.class_weight = classes == "inferred", class_weight
        logits = num_classes if self.infers_class else 0
        self.encoder = ENCODERS[encoder](self.image_shape, 2 * self.encoded_dim + logits)
        decoder_kwargs = {"hidden": tuple(hidden)} if decoder != "broadcast" else {}
        self.decoder = DECODERS[decoder](self.image_shape, latent_dim + num_classes, **decoder_kwargs)
        # The window's inscribed disc turns into itself; a square's corners do not: with ``disc`` the
        # encoder sees and the likelihood scores the disc alone, so no latent but the angle has to
        # say how the window's frame cuts the content (issue 26: z told identical grains apart).
        support = inscribed_disc(*self.image_shape[1:])[None, None] if disc else torch.ones(1, 1, 1, 1)
        self.register_buffer("support", support, persistent=False)
        self.register_buffer("angle_prior", torch.tensor(float(angle_prior)))
        self.register_buffer("shift_prior", torch.tensor(float(shift_prior)))
        if likelihood == "gaussian" and noise_scale is None:
            self.log_noise_scale = torch.nn.Parameter(torch.tensor(-2.0))
        else:
            self.register_buffer("log_noise_scale", torch.tensor(float(noise_scale or 1.0)).log())
        # Weight of the continuous latents' KL terms: 1 is the ELBO; training may warm it up from ~0,
        # so the encoder learns the angle before the KL can pull it to the prior (posterior collapse).
        # A tensor, so changing it neither recompiles a compiled model nor enters checkpoints.
        self.register_buffer("kl_weight", torch.tensor(1.0), persistent=False)
        self._elbo = Trace_ELBO()
        # Exact sum over an unknown class: the guide's class site is enumerated in parallel.
        self._enumerated_elbo = TraceEnum_ELBO(max_plate_nesting=1)

    @property
    def encoded_dim(self):
        """Length of the encoded vector: ``[angle?, shift_y?, shift_x?, z...]``."""
        return int(self.rotation) + 2 * int(self.translation) + self.latent_dim

    # -- Pyro model and guide ---------------------------------------------------------------
    def model(self, x, y=None):
        batch = x.shape[0]
        with pyro.plate("data", batch):
            with pyro.poutine.scale(scale=self.kl_weight):
                z = pyro.sample("z", dist.Normal(x.new_zeros(batch, self.latent_dim), 1.0).to_event(1))
                angle = shift = None
                if self.rotation:
                    angle = pyro.sample("angle", dist.Normal(x.new_zeros(batch), self.angle_prior))
                if self.translation:
                    shift = pyro.sample("shift", dist.Normal(x.new_zeros(batch, 2), self.shift_prior).to_event(1))
            if self.infers_class:
                y = pyro.sample("y", dist.Categorical(logits=x.new_zeros(batch, self.num_classes)), obs=y)
            out = self._decoder_output(z, y, angle, shift)
            pyro.sample("x", self._likelihood(out), obs=x)

    def guide(self, x, y=None):
        parts = self._posterior(x)
        with pyro.plate("data", x.shape[0]):
            with pyro.poutine.scale(scale=self.kl_weight):
                pyro.sample("z", dist.Normal(*parts["z"]).to_event(1))
                if self.rotation:
                    pyro.sample("angle", dist.Normal(*parts["angle"]))
                if self.translation:
                    pyro.sample("shift", dist.Normal(*parts["shift"]).to_event(1))
            if self.infers_class and y is None:
                pyro.sample("y", dist.Categorical(logits=parts["logits"]), infer={"enumerate": "parallel"})

    def loss(self, x, y=None):
        """Differentiable -ELBO, mean per sample (plus the classifier term on known labels)."""
        if not self.infers_class:
            return self._elbo.differentiable_loss(self.model, self.guide, x, y) / x.shape[0]
        known = y >= 0 if y is not None else torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        total = x.new_zeros(())
        if not known.all():
            total = total + self._enumerated_elbo.differentiable_loss(self.model, self.guide, x[~known])
        if known.any():
            total = total + self._elbo.differentiable_loss(self.model, self.guide, x[known], y[known])
            logits = self._posterior(x[known])["logits"]
            total = total + self.class_weight * F.cross_entropy(logits, y[known].long(), reduction="sum")
        return total / x.shape[0]

    def forward(self, x, y=None):
        return self.loss(x, y)

    # -- inference helpers ------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x):
        """Posterior ``(mean, std)`` of the encoded vector ``[angle?, shift_y?, shift_x?, z...]``."""
        return self._loc_scale(self.encoder(x * self.support))

    @torch.no_grad()
    def classify(self, x):
        """Posterior class probabilities ``(B, num_classes)`` of a model with an inferred class."""
        if not self.infers_class:
            raise ValueError("this model has no inferred class (classes='inferred')")
        return torch.softmax(self._posterior(x)["logits"], dim=-1)

    @torch.no_grad()
    def decode(self, z, angle=None, shift=None, y=None):
        """Mean image for latents ``z``; ``z`` may also be a full encoded vector (angle/shift included).

        Returns values on the data scale (probabilities for Bernoulli).
        """
        if z.shape[-1] == self.encoded_dim and self.encoded_dim != self.latent_dim:
            parts = self._split(z, z)
            z = parts["z"][0]
            angle = parts["angle"][0] if angle is None and self.rotation else angle
            shift = parts["shift"][0] if shift is None and self.translation else shift
        return self.mean_image(self._decoder_output(z, y, angle, shift))

    def renderer(self, z, y=None):
        """The decoder's images of content latents ``z`` (class ``y``) at any angle and shift, and
        on a polar grid, decoded once (:class:`~models.decoders.Rendering`; decoder outputs: apply
        :meth:`mean_image` for images on the data scale)."""
        return self.decoder.renderer(self._code(z, y))

    def mean_image(self, out):
        """The decoder's output ``out`` on the data scale (probabilities for Bernoulli)."""
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    def reconstruct(self, x, y=None):
        """Decode the posterior mean of ``x`` (rotation and shift included; the likeliest class if inferred)."""
        if self.infers_class and y is None:
            y = self.classify(x).argmax(-1)
        return self.decode(self.encode(x)[0], y=y)

    # -- internals --------------------------------------------------------------------------
    def _posterior(self, x):
        """Guide parameters: ``(loc, scale)`` per latent, and the class logits."""
        out = self.encoder(x * self.support)
        parts = self._split(*self._loc_scale(out))
        parts["logits"] = out[:, 2 * self.encoded_dim:]
        return parts

    def _loc_scale(self, out):
        """The encoder's features as the encoded vector's Gaussian ``(loc, scale)``."""
        d = self.encoded_dim
        return out[:, :d], F.softplus(out[:, d:2 * d]) + 1e-4

    def _split(self, loc, scale):
        parts, i = {}, 0
        if self.rotation:
            parts["angle"] = (loc[:, i], scale[:, i])
            i += 1
        if self.translation:
            parts["shift"] = (loc[:, i:i + 2], scale[:, i:i + 2])
            i += 2
        parts["z"] = (loc[:, i:], scale[:, i:])
        return parts

    def _code(self, z, y):
        if not self.num_classes:
            return z
        if y is None:
            raise ValueError("this model is class-conditional: pass the labels y")
        one_hot = F.one_hot(y.long(), self.num_classes).to(z.dtype)
        batch_shape = torch.broadcast_shapes(z.shape[:-1], one_hot.shape[:-1])
        return torch.cat([z.expand(*batch_shape, -1), one_hot.expand(*batch_shape, -1)], dim=-1)

    def _decoder_output(self, z, y, angle, shift):
        code = self._code(z, y)
        if code.dim() == 2:
            return self.decoder(code, angle, shift)
        # An enumerated class adds a leading dim: decode (K, B) codes as K*B images.
        k, b = code.shape[:2]
        angle = None if angle is None else angle.expand(k, b).reshape(-1)
        shift = None if shift is None else shift.expand(k, b, 2).reshape(-1, 2)
        out = self.decoder(code.reshape(k * b, -1), angle, shift)
        return out.view(k, b, *out.shape[1:])

    def _pixels(self, out):
        """The likelihood of each pixel given the decoder's output ``out`` (any image size)."""
        if self.likelihood == "bernoulli":
            # Grey-level data in [0, 1] are scored with the Bernoulli cross-entropy, as in the article.
            return dist.Bernoulli(logits=out, validate_args=False)
        return dist.Normal(out, self.log_noise_scale.exp())

    def _likelihood(self, out):
        pixels = self._pixels(out)
        if self.config["disc"]:
            pixels = pixels.mask(self.support.bool())
        return pixels.to_event(3)


class VAE(RVAE):
    """Plain VAE: no rotation latent."""

    def __init__(self, image_shape, **kwargs):
        kwargs.setdefault("rotation", False)
        super().__init__(image_shape, **kwargs)
