"""What produced a result: software version, git commit, file checksums and times."""
import datetime
import hashlib
import os
import stat
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
    """The SHA-256 of the regular file at ``path``, of the bytes it had when opened.

    ``ValueError`` for anything else a path may name: a FIFO is opened without waiting for a
    writer and refused, and a device (``/dev/zero``) is refused before a byte is read."""
    if path is None:
        raise FileNotFoundError("no file named")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise type(err)(err.errno, err.strerror, str(path)) from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{str(path)!r} is not a regular file")
        digest, left = hashlib.sha256(), info.st_size
        while left > 0:  # the size it had when opened: a file that grows meanwhile is not read on and on
            block = f.read(min(left, 1 << 20))
            if not block:
                break
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def modification_time(path):
    return datetime.datetime.fromtimestamp(os.path.getmtime(path), datetime.timezone.utc).isoformat()


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


SAMPLED_CHUNKS = 4  # chunk files whose bytes join a store's fingerprint (spread evenly over the array)


def store_fingerprint(path, variable):
    """A short digest that identifies the content of ``variable`` in the Zarr store at ``path``
    without reading all of it: its metadata (shape, dtype, chunks, codecs), the name and size of
    every chunk file, and each chunk's stored CRC-32C (its last 4 bytes, where the pipeline wrote
    the store: :mod:`pipeline.compression`), so a chunk rewritten with other values changes it;
    for a store without checksums, the bytes of a few chunks. Copies of a store share it."""
    array = Path(path) / variable
    metadata = (array / "zarr.json").read_bytes() if (array / "zarr.json").exists() else b""
    digest = hashlib.sha256(metadata)
    chunks = sorted((p for p in array.rglob("*") if p.is_file() and p.name != "zarr.json"), key=str)
    sizes = [chunk.stat().st_size for chunk in chunks]
    for chunk, size in zip(chunks, sizes):
        digest.update(f"{chunk.relative_to(array)}:{size};".encode())
    if _chunks_end_with_checksums(metadata):
        for chunk, size in zip(chunks, sizes):
            with open(chunk, "rb") as f:
                f.seek(max(0, size - 4))
                digest.update(f.read(4))
        return digest.hexdigest()[:32]
    step = max(1, len(chunks) // SAMPLED_CHUNKS)
    for chunk in chunks[::step][:SAMPLED_CHUNKS]:
        digest.update(chunk.read_bytes())
    return digest.hexdigest()[:32]


def _chunks_end_with_checksums(metadata):
    """Whether an array's ``zarr.json`` says each chunk file ends with its CRC-32C (unsharded)."""
    import json

    try:
        codecs = json.loads(metadata).get("codecs", [])
    except ValueError:
        return False
    return bool(codecs) and codecs[-1].get("name") == "crc32c"
