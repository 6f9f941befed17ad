"""Site profiles for ``rvae submit``: what each stage's batch job asks SLURM for, as YAML data.

The profiles shipped in ``slurm/sites/`` (``generic``, ``perlmutter``, ``frontier``) are meant to
be copied and edited; ``--site NAME`` takes a shipped one, ``--site path.yaml`` a user's own. A
profile lists in ``required`` the fields a copy must fill (an account, say); one that is left
empty is refused in one line naming it.
"""
import re
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from .config import Section, parse_config, read_yaml

SITES_DIR = Path(__file__).resolve().parent.parent / "slurm" / "sites"
TIME = r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$"  # SLURM's D-HH:MM:SS forms


class StageTimes(Section):
    cube: str = Field("01:00:00", pattern=TIME)
    patches: str = Field("01:00:00", pattern=TIME)
    train: str = Field("04:00:00", pattern=TIME)
    encode: str = Field("04:00:00", pattern=TIME)
    report: str = Field("00:30:00", pattern=TIME)


class Site(Section):
    """One site's settings; see ``slurm/sites/generic.yaml`` for what each field does."""
    name: str
    account: Optional[str] = None
    partition: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    nodes: int = Field(1, ge=1)
    tasks_per_node: int = Field(1, ge=1)
    cpus_per_task: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    gpu_bind: Optional[str] = None
    cpu_bind: Optional[str] = None
    mpi: str = "pmix"
    backend: Literal["ddp", "horovod"] = "ddp"
    dask: Literal["local", "mpi"] = "local"
    dask_tasks: int = Field(1, ge=1)
    dask_cpus: int = Field(1, ge=1)
    signal_seconds: int = Field(120, ge=10)
    time: StageTimes = StageTimes()
    setup: list[str] = []
    env: dict[str, str] = {}
    required: list[str] = []

    @property
    def ranks(self):
        return self.nodes * self.tasks_per_node


def load_site(name_or_path, **overrides):
    """The :class:`Site` named (a shipped profile) or at a path, with ``overrides`` (non-None
    values) applied; raises ``ValueError`` in one line for a bad or incomplete profile."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = SITES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            shipped = sorted(p.stem for p in SITES_DIR.glob("*.yaml"))
            raise ValueError(f"no site profile {name_or_path!r}: the shipped ones are {', '.join(shipped) or 'none'}; "
                             f"or pass the path of your own (a copy of {SITES_DIR / 'generic.yaml'})")
    data = read_yaml(path, what="site profile")
    if isinstance(data, dict):
        data = {**data, **{key: value for key, value in overrides.items() if value is not None}}
    site = parse_config(data, Site, source=f"site profile {path}")
    unknown = [field for field in site.required if field not in Site.model_fields]
    if unknown:
        raise ValueError(f"site profile {path}: required names {unknown[0]!r}, which is not a field")
    missing = [field for field in site.required if getattr(site, field) in (None, "", [], {})]
    if missing:
        raise ValueError(f"site profile {path}: {missing[0]!r} is required on {site.name}; set it in a copy of the "
                         f"profile or pass --{missing[0].replace('_', '-')}")
    if site.dask == "mpi" and site.dask_tasks < 3:
        raise ValueError(f"site profile {path}: dask: mpi needs dask_tasks >= 3 (scheduler, client, workers)")
    if re.search(r"\s", site.name):
        raise ValueError(f"site profile {path}: name {site.name!r} has spaces")
    return site
