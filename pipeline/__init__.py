"""rvae-hpc: the data flow from microscope cubes to rotation and latent maps.

Stages (one module each): :mod:`~pipeline.ingest`, :mod:`~pipeline.patches`,
:mod:`~pipeline.train`, :mod:`~pipeline.encode`, :mod:`~pipeline.report`; the CLI is
:mod:`pipeline.cli` (``rvae``).
"""
import warnings

# We write consolidated metadata so that xarray.open_zarr opens our stores quickly and quietly;
# zarr-python warns on every such write that it is not (yet) in the v3 specification.
warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)

from . import analysis  # noqa: E402,F401  (registers the ds.rvae accessor, as xarray extensions do on import)
from .results import load_results, open_results  # noqa: E402

__all__ = ["load_results", "open_results"]
