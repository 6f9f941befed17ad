"""Where benchmarks write: a folder outside the repository (nothing generated is committed)."""
import os
import tempfile
from pathlib import Path


def scratch(name):
    """``$RVAE_BENCH_DIR/NAME``, or ``<temp dir>/rvae-benchmarks/NAME``: a benchmark's default
    ``--workdir``, kept between runs so that a second run reuses what the first one made."""
    return Path(os.environ.get("RVAE_BENCH_DIR", Path(tempfile.gettempdir()) / "rvae-benchmarks")) / name
