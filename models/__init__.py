"""Pyro models of the rVAE family. Imports torch and pyro only."""
import pyro

# Parameters live in the modules (not Pyro's global param store), so DDP/Horovod can wrap them.
# It must be set before any PyroModule is built, hence here at import.
pyro.settings.set(module_local_params=True)

from .checkpoint import build_model, load_checkpoint, save_checkpoint  # noqa: E402
from .manifold import manifold2d  # noqa: E402
from .rvae import RVAE, VAE  # noqa: E402
from .spectral import SpectrumVAE  # noqa: E402

__all__ = ["RVAE", "SpectrumVAE", "VAE", "build_model", "load_checkpoint", "manifold2d", "save_checkpoint"]
