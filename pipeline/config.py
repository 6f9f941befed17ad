"""The run configuration: one YAML file, validated once at the entry point.

Every section is a strict pydantic model: an unknown key or a bad value is rejected with a
one-line message naming the key (:func:`load_config`). The stage functions take the fields
as explicit keyword arguments; they never see this module's classes.
"""
import typing
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError


def _accepts_bool(annotation):
    """Whether a field's annotation admits a bool (``bool`` itself, or a union holding it)."""
    return annotation is bool or bool in typing.get_args(annotation)


class Section(BaseModel):
    """A strict settings section: unknown keys, infinities and NaN refused; a bool only where a
    field is a bool (pydantic would read ``epochs: true`` as 1 and ``refine: "yes"`` as True)."""
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _bools_only_where_bools(cls, data):
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if field is None:
                continue
            if _accepts_bool(field.annotation) != isinstance(value, bool) and (
                    isinstance(value, bool) or field.annotation is bool):
                wanted = "true or false" if field.annotation is bool else "a number or a word, not true/false"
                raise PydanticCustomError("config_value", "{name}: expected {wanted} (got {got})",
                                          {"name": name, "wanted": wanted, "got": repr(value)})
        return data


class SyntheticConfig(Section):
    """Embedded default data with known ground truth (``rvae synth``)."""
    kind: Literal["lattice", "4dstem", "spectra"] = Field(
        "lattice", description="atomic lattice image, 4D-STEM cube, or spectrum image (core-loss-like spectra "
                               "shifted along energy by region, with the true shift per position)")
    size: Optional[int] = Field(
        None, gt=15, description="image side in pixels (lattice; default 384) or scan side (4dstem; default 16, at "
                                 "most 64; spectra: default 64, any size: written block by block)")
    channels: Optional[int] = Field(None, ge=16, le=65536,
                                    description="spectra: channels per spectrum (default 128, 0.5 eV each)")
    spacing: Optional[float] = Field(None, gt=2, description="lattice spacing in pixels (lattice only; default 10)")
    grains: int = Field(4, ge=1, description="number of grains (Voronoi cells) with distinct rotations (spectra: "
                                             "regions with distinct shifts and white-line heights)")
    dose: Optional[float] = Field(
        200.0, gt=0, description="electrons per pixel at full intensity (shot noise); null: none")
    drift: Optional[float] = Field(
        None, description="scan drift: columns of x-shift per row of y (lattice only; default 0)")
    pixel_size: float = Field(0.03, gt=0, description="nm per pixel")
    seed: int = Field(0, description="random seed of the grains' orientations and the noise")


class Im2specConfig(Section):
    """Image window to spectrum and back (``rvae im2spec``)."""
    window: int = Field(16, ge=4, description="side of the image window around each position, px")
    energy: str = Field("", description="the spectra's range, lo:hi in the energy axis' units (default: the whole "
                                        "axis)")
    binning: int = Field(1, ge=1, description="spectrum channels summed into one")
    latent_dim: int = Field(3, ge=1, le=64, description="values in the bottleneck between encoder and decoder")
    epochs: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = Field(
        "auto", description="passes over the training pairs; auto: 30, or enough for 3000 optimizer steps")
    input_noise: float = Field(0.1, ge=0, le=1, description="Gaussian noise added to each training input (on the "
                                                            "[0, 1] scale), against memorising its own noise")
    held_out: float = Field(0.2, gt=0, lt=0.8, description="fraction of the scan's tiles (2 windows a side) held "
                                                          "out; training keeps a window away from them")
    max_samples: int = Field(20000, ge=16, description="pairs cut at random positions, at most")
    seed: int = Field(0, description="random seed of the positions and the model's weights")
    variable: str = Field("data", description="data variable of both cubes")


class IngestConfig(Section):
    """Source file to Zarr cube (``rvae ingest``)."""
    dims: Optional[str] = Field(None, description="comma-separated dim names, e.g. 'y,x,ky,kx' (default: by ndim)")
    dataset: Optional[str] = Field(None, description="HDF5 dataset path or Zarr array name inside the source")
    pixel_size: Optional[float] = Field(
        None, gt=0, description="scan step in physical units (default: the file's calibration, else 1)")
    units: Optional[str] = Field(None, description="units of the scan axes (default: the file's, else px)")
    signal_pixel_size: Optional[float] = Field(
        None, gt=0, description="detector pixel (ky, kx) or energy channel in physical units, e.g. mrad or eV "
                                "(default: the file's calibration, else 1); detector axes are then centred on 0")
    signal_units: Optional[str] = Field(
        None, description="units of the detector or energy axes, e.g. mrad, 1/nm, eV (default: the file's, else px)")
    shard: Optional[int] = Field(
        None, ge=1, description="store N x N chunks of the scan (N per scan axis) in one shard file: fewer, larger "
                                "files; each write holds a whole shard in memory; none: a file per chunk")


class PatchesConfig(Section):
    """Cube to training patch stack (``rvae patches``)."""
    mode: Literal["points", "grid", "frames", "spectra"] = Field(
        "points", description="atom-centred windows, a grid of windows, whole frames (4D-STEM), or each position's "
                              "spectrum (spectrum images)")
    window: Union[Annotated[int, Field(ge=4)], Literal["auto"]] = Field(
        "auto", description="window side in pixels (points, grid); auto: about 3.7 lattice spacings, the spacing "
                            "read from the image's power spectrum")
    stride: Optional[int] = Field(None, ge=1, description="grid step in pixels (default: the window)")
    transform: Literal["none", "logfft"] = Field(
        "none", description="per-window transform: logfft = log |FFT| of the Hann-windowed window")
    binning: int = Field(1, ge=1, description="frames mode: bin each frame by this factor; spectra mode: sum this "
                                              "many neighbouring energy channels")
    channels: str = Field("", description="spectrum images: energy bands summed into channels, e.g. '1.2:1.6,6.2:6.6'")
    energy: str = Field("", description="spectra mode: the energy range lo:hi in the energy axis' units, e.g. 400:800 "
                                        "(default: the whole axis)")
    background: Literal["none", "powerlaw"] = Field(
        "none", description="spectra mode: background removed from each spectrum: powerlaw = A E^-r fitted on "
                            "--pre-edge (EELS core loss)")
    pre_edge: str = Field("", description="spectra mode, --background powerlaw: the window lo:hi the background is "
                                          "fitted on, before the edge (energy axis' units)")
    min_distance: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = Field(
        "auto", description="points mode: minimum distance between atom columns, pixels; auto: 0.6 lattice spacings "
                            "(one column per unit cell of the brightest sublattice), else 3")
    polarity: Literal["auto", "bright", "dark"] = Field(
        "auto", description="points mode: atom columns are intensity maxima (bright, e.g. HAADF) or minima (dark, "
                            "e.g. ABF); auto: dark where the intensities are skewed towards low values")
    threshold: float = Field(
        0.3, ge=0, le=1, description="points mode: peak threshold, a fraction of the intensity range (its 0.5th to "
                                     "99.5th percentile: a few very bright dopant columns do not raise it)")
    points: Optional[Path] = Field(
        None, description="points mode: CSV (or Zarr) of given positions, columns row,col (px) or y,x (physical); "
                          "default: find atom columns")
    max_samples: Optional[int] = Field(20000, ge=1, description="training stack bound; 'none' keeps every position")
    selection: Literal["random", "strided"] = Field(
        "random", description="which positions a bounded stack keeps: random (by seed) or evenly spaced")
    seed: int = Field(0, description="random seed of the positions a bounded stack keeps")
    variable: str = Field("data", description="data variable of the cube")


class ModelConfig(Section):
    """The model (``rvae train``): an rVAE for windows and frames, a shift-invariant VAE for spectra."""
    latent_dim: int = Field(2, ge=1, description="content latents z (besides the angle and shifts)")
    rotation: bool = Field(True, description="windows: an angle latent absorbs each window's in-plane rotation")
    translation: bool = Field(False, description="windows: two shift latents absorb each window's offset")
    shift: bool = Field(True, description="spectra: a shift latent absorbs each spectrum's shift along energy "
                                          "(the shift-VAE); off: a plain VAE")
    decoder: Literal["warp", "spatial", "broadcast"] = Field(
        "warp", description="warp: a canonical image (spectrum) decoded once and turned (shifted by resampling): "
                            "fast; spatial: the article's MLP of pixel (energy) coordinates; broadcast: a "
                            "spatial-broadcast conv decoder (1-D for spectra)")
    encoder: Literal["mlp", "conv"] = Field("mlp", description="fully connected or convolutional encoder")
    likelihood: Literal["auto", "bernoulli", "gaussian", "poisson"] = Field(
        "auto", description="how samples (normalised to [0, 1]) are scored: Bernoulli cross-entropy, as in the "
                            "article, Gaussian, or (spectra of counts) Poisson; auto: bernoulli for windows, gaussian "
                            "for spectra")
    noise_scale: Optional[float] = Field(0.1, gt=0, description="gaussian likelihood width; null: learned")
    angle_prior: float = Field(1.0, gt=0, description="windows: prior width of the angle latent, radians")
    shift_prior: float = Field(0.1, gt=0, description="prior width of the shift latents, half-windows (half-spectra)")
    disc: bool = Field(True, description="windows: encode and score only each window's inscribed disc, which turns "
                                         "into itself (a square's corners do not): the angle alone says how a window "
                                         "is turned")
    hidden: Optional[tuple[Annotated[int, Field(ge=1, le=8192)], ...]] = Field(
        None, min_length=1, description="decoder MLP widths, e.g. 256,256, each 1 to 8192 (default: 256,256 warp; "
                                        "96,96,96 spatial)")


class TrainConfig(Section):
    epochs: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = Field(
        "auto", description="passes over the patch store; auto: 30, or more for a small stack so that training takes "
                            "at least 300 optimizer steps (3000 for spectra)")
    batch_size: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = Field(
        "auto", description="samples per step on each rank; auto: 128, or half of each rank's share of a smaller "
                            "stack")
    lr: float = Field(1e-3, gt=0, description="Adam's learning rate")
    restarts: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = Field(
        "auto", description="starts tried (seeds seed, seed+1000, ...), each trained for 15% of the steps; the one "
                            "with the lowest loss is trained on; auto: 3 for a stack small enough that epochs auto "
                            "trains longer than 30 epochs (where a start can leave the angle collapsed to its "
                            "prior), else 1")
    kl_warmup: float = Field(
        0.3, ge=0, lt=1, description="fraction of the training steps over which the latents' KL weight rises from "
                                     "0.01 to 1 (against the angle collapsing to the prior); 0: the plain ELBO "
                                     "throughout")
    seed: int = Field(0, description="random seed of the model's initial weights, the batches and the ELBO's samples")
    threads: Optional[int] = Field(None, ge=1, description="torch threads per rank (default: torch's choice)")
    backend: Literal["none", "ddp", "horovod"] = Field(
        "none", description="data-parallel backend (launch ranks with srun, mpirun, torchrun or horovodrun)")
    compression: Literal["none", "fp16"] = Field(
        "none", description="gradient allreduce in fp16: half the bytes per step")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast the forward pass (GPU)")
    compile: bool = Field(False, description="torch.compile the model")
    checkpoint_every: Optional[int] = Field(
        None, ge=1, description="also checkpoint every N steps (always: each epoch, and on SIGTERM/SIGUSR1)")
    timeout: int = Field(300, ge=1, description="seconds a rank waits for the others before the job fails")


MAX_SYMMETRY = 24  # n-fold orders beyond crystals' 2, 3, 4, 6 and quasicrystals' 5, 8, 10, 12


class EncodeConfig(Section):
    """Stream the cube through the encoder (``rvae encode``)."""
    batch_size: int = Field(1024, ge=1, description="windows through the model at a time")
    block: int = Field(4096, ge=1, description="samples per streamed block (a results chunk)")
    symmetry: Union[Annotated[int, Field(ge=1, le=MAX_SYMMETRY)], Literal["auto"]] = Field(
        "auto", description="n-fold symmetry: angles wrapped to (-pi/n, pi/n]; auto: the lattice's, as the patch "
                            "stage read it from the image (else 1)")
    refine: bool = Field(
        True, description="refine each window's angle against the trained decoder (a search over one symmetry "
                          "period, scored on the window's inscribed disc); false: the encoder's angle as it is")
    frame: Literal["reference", "own"] = Field(
        "reference", description="what a refined angle is relative to: reference, the decoder's image at one "
                                 "reference code (the median of the training windows' codes) for every window; own, "
                                 "the image at each window's own code (which may itself be turned)")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast the model (GPU)")
    threads: Optional[int] = Field(None, ge=1, description="torch threads per rank (default: torch's choice)")
    timeout: int = Field(300, ge=1, description="seconds a rank waits for the others before the job fails")


class RunConfig(Section):
    """``rvae run CONFIG``: the whole chain in ``workdir``."""
    workdir: Path = Path("rvae-run")
    dask: Literal["threads", "local", "mpi", "slurm"] = Field(
        "local", description="where the Dask stages run (pipeline.scheduler)")
    input: Optional[Path] = Field(None, description="source file or Zarr cube; null: generate synthetic data")
    site: Optional[str] = Field(None, description="dask: slurm: the site profile (a shipped name or a YAML path) "
                                                  "whose account, partition, QOS and setup lines the Dask worker "
                                                  "jobs take; their logs go to WORKDIR/slurm/logs")
    synthetic: SyntheticConfig = SyntheticConfig()
    ingest: IngestConfig = IngestConfig()
    patches: PatchesConfig = PatchesConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    encode: EncodeConfig = EncodeConfig()

    @model_validator(mode="after")
    def _settings_that_apply(self):
        mode = self.patches.mode
        if mode in ("frames", "spectra") and self.patches.transform != "none":
            raise ValueError(f"patches.transform applies to 'points' and 'grid' windows, not to '{mode}'")
        if mode == "spectra" and self.synthetic.kind != "spectra" and self.input is None:
            raise ValueError(f"patches.mode: spectra needs a spectrum image: set input, or synthetic.kind: spectra "
                             f"(synthetic.kind is {self.synthetic.kind!r})")
        check_encode_on_dask(self.dask, **self.encode.model_dump())
        if self.site and self.dask != "slurm":
            raise ValueError(f"site: {self.site!r} is for the Dask worker jobs of dask: slurm (dask is {self.dask!r}); "
                             f"set dask: slurm, or leave site out (rvae submit takes --site)")
        return self


def check_encode_on_dask(dask, *, precision="fp32", threads=None, timeout=300, **_):
    """Refuse encode settings that cannot apply on Dask workers (``--dask mpi|slurm``: every block
    a task of one torch thread in fp32): ``ValueError`` naming them."""
    if dask not in ("mpi", "slurm"):
        return
    ignored = [name for name, value, default in (("precision", precision, "fp32"), ("threads", threads, None),
                                                 ("timeout", timeout, 300)) if value != default]
    if ignored:
        raise ValueError(f"encode on Dask workers (dask: {dask}) runs each block as a task of one torch thread in "
                         f"fp32: encode {', '.join(ignored)} cannot apply there; leave "
                         f"{'them' if len(ignored) > 1 else 'it'} out, or encode on ranks (srun, mpirun or torchrun "
                         f"rvae encode) instead")


def format_validation_error(err, section=None):
    """One line per problem: ``key.path: message``; an unknown key lists the keys allowed where
    it stood (in ``section``, the model that was validated)."""
    problems = {}  # key: [messages], a union's alternatives under one key
    for e in err.errors():
        loc = [p for p in e["loc"] if not _is_union_tag(p)]
        key = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            allowed = _section_at(section or RunConfig, loc[:-1]).model_fields
            problems.setdefault(key, []).append(f"unknown key (allowed: {', '.join(allowed)})")
        elif e["type"] == "config_value":  # a section's own check, naming its key
            problems.setdefault(f"{key}.{e['msg']}" if key else e["msg"], [])
        elif e["type"] == "value_error" and not loc:  # the run's own check across sections
            problems.setdefault(str(e["ctx"]["error"]), [])
        else:
            message = e["msg"].removeprefix("Value error, ")
            problems.setdefault(key or "config", []).append(f"{message} (got {e.get('input')!r})")
    return "; ".join(f"{key}: {' or '.join(dict.fromkeys(messages))}" if messages else key
                     for key, messages in problems.items())


def _is_union_tag(part):
    """pydantic's name for one alternative of a union (``constrained-int``, ``literal['auto']``)."""
    return isinstance(part, str) and (not part.isidentifier() or part in ("int", "float", "str", "bool"))


def _section_at(section, loc):
    for name in loc:
        annotation = section.model_fields[name].annotation if isinstance(name, str) else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return section
        section = annotation
    return section


def parse_config(data, section=RunConfig, source="config"):
    """Validate a mapping into ``section``; raise ``ValueError`` with a one-line message."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return section.model_validate(data)
    except ValidationError as err:
        raise ValueError(f"{source}: {format_validation_error(err, section)}") from err


def read_yaml(path, what="config file"):
    """The mapping in a YAML file; ``FileNotFoundError`` or ``ValueError`` in one line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {str(path)!r}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start} is {err.object[err.start]:#04x}); save the "
                         f"{what} as UTF-8") from err
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from err


def load_config(path):
    """Read and validate a YAML run configuration."""
    return parse_config(read_yaml(path), source=str(path))


def to_yaml(config, exclude=None):
    """The resolved configuration as YAML text (without the sections in ``exclude``)."""
    return yaml.safe_dump(config.model_dump(mode="json", exclude=exclude), sort_keys=False)


def as_run(config):
    """The configuration that actually ran, as YAML: the synthetic section only for synthetic
    data, the ingest section only for a source that was ingested (stored in the results)."""
    return to_yaml(config, exclude={"ingest"} if config.input is None else {"synthetic"})
