"""What produced a result: software version, git commit, file checksums and times."""
import datetime
import hashlib
import os
import subprocess
from importlib import metadata
from pathlib import Path


def software_version():
    try:
        return metadata.version("rvae-hpc")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def git_commit():
    """The commit of the source tree this package runs from, or ``"unknown"``."""
    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def modification_time(path):
    return datetime.datetime.fromtimestamp(os.path.getmtime(path), datetime.timezone.utc).isoformat()


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


SAMPLED_CHUNKS = 4  # chunk files whose bytes join a store's fingerprint (spread evenly over the array)


def store_fingerprint(path, variable):
    """A short digest that identifies the content of ``variable`` in the Zarr store at ``path``
    without reading all of it: its metadata (shape, dtype, chunks, codecs), the name and size of
    every chunk file, and the bytes of a few of them. Copies of a store share it; a store written
    anew with other values, or one that lost or changed chunks, almost surely does not."""
    array = Path(path) / variable
    digest = hashlib.sha256((array / "zarr.json").read_bytes() if (array / "zarr.json").exists() else b"")
    chunks = sorted((p for p in array.rglob("*") if p.is_file() and p.name != "zarr.json"), key=str)
    for chunk in chunks:
        digest.update(f"{chunk.relative_to(array)}:{chunk.stat().st_size};".encode())
    step = max(1, len(chunks) // SAMPLED_CHUNKS)
    for chunk in chunks[::step][:SAMPLED_CHUNKS]:
        digest.update(chunk.read_bytes())
    return digest.hexdigest()[:32]
