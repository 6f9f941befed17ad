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
