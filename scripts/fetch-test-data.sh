#!/usr/bin/env bash
# Real microscope files for the tests, from wheels on PyPI (the only place they ship):
# hyperspy 1.7.6's Bruker EDS, Gatan EELS and cathodoluminescence spectrum images and atomap 0.4.2's ADF and ABF
# STEM images (GPL-3, test data only).
# Extracted once into $RVAE_TEST_DATA (default ~/.cache/rvae-hpc/testdata); nothing enters the repo.
set -euo pipefail
DEST=${RVAE_TEST_DATA:-$HOME/.cache/rvae-hpc/testdata}
PYTHON=${PYTHON:-python3}
FILES=(hyperspy/tests/io/bruker_data/bcf_v2_50x50px.bcf atomap/tests/datasets/test_ADF_cropped.hdf5
       atomap/tests/datasets/test_ABF_cropped.hdf5 hyperspy/tests/io/dm4_3D_data/EELS_SI.dm4
       hyperspy/tests/io/dm4_2D_data/test-MonoCL_spectrum-SI.dm4)
missing=0
for f in "${FILES[@]}"; do [ -f "$DEST/$(basename "$f")" ] || missing=1; done
[ "$missing" = 0 ] && exit 0
mkdir -p "$DEST/wheels"
"$PYTHON" -m pip download --quiet --no-deps --dest "$DEST/wheels" hyperspy==1.7.6 atomap==0.4.2
"$PYTHON" - "$DEST" "${FILES[@]}" <<'PY'
import glob, os, shutil, sys, zipfile
dest, wanted = sys.argv[1], sys.argv[2:]
for wheel in glob.glob(os.path.join(dest, "wheels", "*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for name in set(wanted) & set(z.namelist()):
            with z.open(name) as src, open(os.path.join(dest, os.path.basename(name)), "wb") as out:
                shutil.copyfileobj(src, out)
missing = [w for w in wanted if not os.path.exists(os.path.join(dest, os.path.basename(w)))]
sys.exit(f"fetch-test-data: not found in the wheels: {missing}" if missing else 0)
PY
echo "test data in $DEST"
