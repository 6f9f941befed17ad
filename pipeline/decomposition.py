"""PCA and NMF of the same windows the rVAE was trained on: the classical baseline, side by side.

Both are fitted out of core with scikit-learn's incremental estimators (``IncrementalPCA`` and
``MiniBatchNMF``, ``partial_fit`` a chunk of the patch store at a time, then ``transform`` chunk by
chunk), so memory stays one chunk of samples whatever the stack's size. They see the normalised
samples the model sees (in [0, 1]; NMF needs them non-negative). Unlike the rVAE they have no
rotation latent: on a lattice of rotated grains their leading components mix orientation with
the lattice's phase in the window.
"""
import numpy as np
import zarr

from .stores import open_store
from .windows import WindowSpec


def decompose(patches_path, n_components=2, seed=0):
    """``{"pca": (N, k), "nmf": (N, k), "y": (N,), "x": (N,), "explained": (k,), "pca_components":
    (k, F), "nmf_components": (k, F)}`` for the N samples of the patch store (F values each)."""
    from sklearn.decomposition import IncrementalPCA, MiniBatchNMF

    ds = open_store(patches_path, what="patch store")
    array = zarr.open_group(str(patches_path), mode="r")["patches"]
    spec = WindowSpec.from_attrs(ds.attrs)
    step = max(array.chunks[0], 4 * n_components)  # IncrementalPCA needs a batch of >= k samples

    def batches():
        for start in range(0, array.shape[0], step):
            block = spec.normalise(array[start:start + step])
            yield np.clip(block.reshape(len(block), -1), 0, None)

    pca = IncrementalPCA(n_components=n_components)
    nmf = MiniBatchNMF(n_components=n_components, init="nndsvda", random_state=seed, max_iter=50)
    for samples in batches():
        if len(samples) >= n_components:  # a last, short batch cannot update PCA
            pca.partial_fit(samples)
        nmf.partial_fit(samples)
    scores = [(pca.transform(samples), nmf.transform(samples)) for samples in batches()]
    return {"pca": np.concatenate([s[0] for s in scores]), "nmf": np.concatenate([s[1] for s in scores]),
            "y": ds["y"].values, "x": ds["x"].values, "explained": pca.explained_variance_ratio_,
            "pca_components": pca.components_, "nmf_components": nmf.components_}
