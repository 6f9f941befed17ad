"""Site profiles for ``rvae submit``: what each stage's batch job asks SLURM for, as YAML data.

The profiles shipped in ``slurm/sites/`` (``generic``, ``perlmutter``, ``frontier``; installed
with the package) are meant to be copied and edited; ``--site NAME`` takes a shipped one,
``--site path.yaml`` a user's own. A profile lists in ``required`` the fields a copy must fill
(an account, say); one that is left empty is refused in one line naming it.

Every value lands in a batch script, and profiles are files people share: a value that would
end a script line (a newline, any control character) is refused, as is a space or a quote in a
value written on an ``#SBATCH`` line (SLURM splits those lines at spaces). Only ``setup`` lines
are shell code, by design.
"""
import re
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, Field, field_validator, model_validator

from .config import Section, parse_config, read_yaml

SITES_DIR = Path(str(files("pipeline.slurm") / "sites"))
TIME = r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$"  # SLURM's D-HH:MM:SS forms
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
DIRECTIVE_VALUE = r"^[^\s\"'\\]+$"  # one word: SLURM splits #SBATCH lines at spaces
MAIL_TYPES = r"^(NONE|BEGIN|END|FAIL|REQUEUE|ALL|INVALID_DEPEND|STAGE_OUT|TIME_LIMIT(_\d0)?|ARRAY_TASKS)" \
             r"(,(NONE|BEGIN|END|FAIL|REQUEUE|ALL|INVALID_DEPEND|STAGE_OUT|TIME_LIMIT(_\d0)?|ARRAY_TASKS))*$"


def _one_word(value):
    if value and not re.fullmatch(DIRECTIVE_VALUE, value):
        raise ValueError("must be one word: no spaces, quotes, backslashes or control characters (it is written "
                         "on an #SBATCH line)")
    return value


Word = Annotated[str, AfterValidator(_one_word)]  # "" allowed: a cpu_* field's "none"


class StageTimes(Section):
    cube: str = Field("01:00:00", pattern=TIME)
    patches: str = Field("01:00:00", pattern=TIME)
    train: str = Field("04:00:00", pattern=TIME)
    encode: str = Field("04:00:00", pattern=TIME)
    report: str = Field("00:30:00", pattern=TIME)


class Site(Section):
    """One site's settings; ``slurm/sites/generic.yaml`` says what each field does."""
    name: str = Field(pattern=r"^[\w.-]+$")
    account: Optional[Word] = None
    partition: Optional[Word] = None
    qos: Optional[Word] = None
    constraint: Optional[Word] = None
    # The CPU-only stages (cube, patches, report): null takes the value above, "" asks for none.
    cpu_account: Optional[Word] = None
    cpu_partition: Optional[Word] = None
    cpu_qos: Optional[Word] = None
    cpu_constraint: Optional[Word] = None
    nodes: int = Field(1, ge=1)
    tasks_per_node: int = Field(1, ge=1)
    cpus_per_task: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    gpus_per_task: Optional[int] = Field(None, ge=1)  # srun --gpus-per-task for the ranks (OLCF's examples)
    gpu_bind: Optional[Word] = None
    cpu_bind: Optional[Word] = None
    mpi: Word = "pmix"
    mem: Optional[str] = Field(None, pattern=r"^\d+[KMGT]?$", description="e.g. 64G; 0: all of a node's memory")
    mail_type: Optional[str] = Field(None, pattern=MAIL_TYPES)
    mail_user: Optional[str] = Field(None, pattern=r"^[\w.+-]+@[\w.-]+$")
    reservation: Optional[Word] = None
    array_limit: Optional[int] = Field(None, ge=1)
    extra_sbatch: list[str] = []
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

    @field_validator("setup", "extra_sbatch")
    @classmethod
    def _one_line_each(cls, lines):
        for line in lines:
            if CONTROL.search(line):
                raise ValueError(f"{line!r} holds a control character (a newline would start another line)")
        return lines

    @field_validator("extra_sbatch")
    @classmethod
    def _sbatch_options(cls, lines):
        for line in lines:
            if not re.fullmatch(r"--[a-z][a-z0-9-]*(=[^\s\"'\\]+)?", line):
                raise ValueError(f"{line!r} is not one sbatch option (--name or --name=value, no spaces or quotes)")
        return lines

    @field_validator("env")
    @classmethod
    def _environment(cls, env):
        for key, value in env.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"{key!r} is not an environment variable name")
            if CONTROL.search(value):
                raise ValueError(f"{key}={value!r} holds a control character")
        return env

    @model_validator(mode="after")
    def _consistent(self):
        unknown = [field for field in self.required if field not in Site.model_fields]
        if unknown:
            raise ValueError(f"required names {unknown[0]!r}, which is not a field")
        if self.dask == "mpi" and self.dask_tasks < 3:
            raise ValueError("dask: mpi needs dask_tasks >= 3 (scheduler, client, workers)")
        return self

    def for_stage(self, cpu_only):
        """``{account, partition, qos, constraint}`` of a stage's job: a CPU-only stage's from the
        ``cpu_*`` fields where they are set ("" for none)."""
        names = ("account", "partition", "qos", "constraint")
        chosen = {name: getattr(self, name) for name in names}
        if cpu_only:
            for name in names:
                value = getattr(self, f"cpu_{name}")
                if value is not None:
                    chosen[name] = value or None
        return chosen


def shipped_sites():
    return sorted(p.stem for p in SITES_DIR.glob("*.yaml"))


def load_site(name_or_path, **overrides):
    """The :class:`Site` named (a shipped profile) or at a path, with ``overrides`` (non-None
    values) applied; raises ``ValueError`` in one line for a bad or incomplete profile."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = SITES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ValueError(f"no site profile {name_or_path!r}: the shipped ones are "
                             f"{', '.join(shipped_sites()) or 'none'}; or pass the path of your own (a copy of "
                             f"{SITES_DIR / 'generic.yaml'})")
    data = read_yaml(path, what="site profile")
    if isinstance(data, dict):
        data = {**data, **{key: value for key, value in overrides.items() if value is not None}}
    site = parse_config(data, Site, source=f"site profile {path}")
    missing = [field for field in site.required if getattr(site, field) in (None, "", [], {})]
    if missing:
        raise ValueError(f"site profile {path}: {missing[0]!r} is required on {site.name}; set it in a copy of the "
                         f"profile or pass --{missing[0].replace('_', '-')}")
    return site
