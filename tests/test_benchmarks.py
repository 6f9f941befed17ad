"""The benchmark scripts that guard numbers people rely on run here at a tiny size, so they cannot rot."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

# clusters, ranks, long training or a fresh environment: not in `make test-quick`
pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script, *args):
    done = subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bench_gpu_runs_every_variant_on_this_device():
    out = run("bench_gpu.py", "--size", 160, "--epochs", 2, "--batch-size", 64, "--samples", 512)
    rows = re.findall(r"^(fp32|bf16)\s+(True|False)\s+(\d+)\s+(\d+)\s+([\d.]+)$", out, re.M)
    assert {(p, c) for p, c, *_ in rows} == {("fp32", "False"), ("bf16", "False"), ("fp32", "True"),
                                             ("bf16", "True")}, out
    assert all(float(train) > 0 and float(encode) > 0 and float(peak) > 0 for *_, train, encode, peak in rows), out


def test_bench_encode_prints_both_ratios_for_both_modes():
    out = run("bench_encode.py", "--rounds", 1, "--size", 256, "--scan", 16)
    for mode in ("grid", "frames"):
        summary = re.search(rf"^{mode}: (\d+) windows; median refined / amortized forward pass [\d.]+, median "
                            rf"end-to-end / forward ([\d.]+), median 2 ranks / 1 rank ([\d.]+)", out, re.M)
        assert summary, out
        assert int(summary.group(1)) > 0 and float(summary.group(2)) > 0 and float(summary.group(3)) > 0, out
