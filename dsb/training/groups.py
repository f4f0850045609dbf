"""Imaging-experiment groups of the training images, for validation on unseen experiments.

Images of one experiment share a microscope, a stain, a magnification and a
cell line, so a random split puts near-copies of every validation image in
training. :func:`assign_groups` clusters images into experiment-like groups
from what each image shows (:func:`image_features`): its size, colour and
grey levels, and the size, shape and density of its nuclei. Groups never mix
image types: each type is clustered on its own (Ward linkage on features
standardised within the type, image and nucleus size weighted double) with a
share of ``n_groups``, and every type with at least ``2 * min_size`` images gets at least two groups, so one can be
held out while another stays in training. The result depends only on the
features and ids, not on their order.

Groups are named by type, the most common image size (height x width) and,
where that is not unique within a type, the size of the nuclei:
``"fluorescence-256x256-small"``, ``"stained-256x320-large"``. A group where no
size covers half of the images is ``"{type}-mixed"``.

On stage1_train (664 images) with ``n_groups=8``:

===========================  ============  ======  ======================  =================================
group                        type          images  median diameter (px)    image sizes (H x W)
===========================  ============  ======  ======================  =================================
fluorescence-256x256-large   fluorescence     273  14.5                    256x256 (270), 256x320 (3)
fluorescence-256x256-small   fluorescence      68  9.9                     256x256 (64), 260x347 (3), 256x320
fluorescence-360x360         fluorescence      90  47.3                    360x360
fluorescence-520x696         fluorescence     110  28.6                    520x696 (90), 512x640 (13), ...
brightfield-1024x1024-large  brightfield        9  19.2                    1024x1024
brightfield-1024x1024-small  brightfield        7  12.4                    1024x1024
stained-256x320-large        stained           35  35.0                    256x320
stained-256x320-small        stained           72  18.9                    256x320
===========================  ============  ======  ======================  =================================

The median diameter is the median over the group's images of each image's
median; "..." in fluorescence-520x696 is 603x1272 (6) and 1040x1388 (1).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy.cluster import hierarchy

from dsb.inference.preprocess import IMAGE_TYPES, as_float, image_stats, to_gray
from dsb.inference.scale import nucleus_diameters

__all__ = [
    "FEATURES",
    "N_GROUPS",
    "image_features",
    "assign_groups",
    "held_out_groups",
]

N_GROUPS = 8
#: Names of the features :func:`image_features` returns, in order.
FEATURES = (
    "log_height",
    "log_width",
    "red",
    "green",
    "blue",
    "brightness",
    "colourfulness",
    "grey_mean",
    "grey_std",
    "grey_p99",
    "log_diameter",
    "eccentricity",
    "coverage",
    "log_density",
)
# Weights on the standardised features: image size and nucleus size tell experiments apart
# best; the three colour means move together, so they share the weight of about one feature.
_WEIGHTS = np.array(
    [{"log_height": 2.0, "log_width": 2.0, "log_diameter": 2.0, "red": 0.5, "green": 0.5, "blue": 0.5}.get(f, 1.0)
     for f in FEATURES]
)


def _eccentricities(labels: np.ndarray) -> np.ndarray:
    """Eccentricity of the moment ellipse of each nucleus (0 disc, towards 1 elongated)."""
    flat = labels.ravel().astype(np.int64, copy=False)
    n = int(flat.max(initial=0)) + 1
    rows, cols = np.indices(labels.shape)
    r, c = rows.ravel().astype(np.float64), cols.ravel().astype(np.float64)
    area = np.bincount(flat, minlength=n)[1:].astype(np.float64)
    keep = area > 0
    sums = [np.bincount(flat, weights=w, minlength=n)[1:] for w in (r, c, r * r, c * c, r * c)]
    a = area[keep]
    mr, mc, rr, cc, rc = (s[keep] / a for s in sums)
    # Central moments; + 1/12 for the extent of a pixel, so a single pixel is a disc.
    vr, vc, cov = rr - mr * mr + 1 / 12, cc - mc * mc + 1 / 12, rc - mr * mc
    half_gap = np.sqrt(((vr - vc) / 2) ** 2 + cov**2)
    big, small = (vr + vc) / 2 + half_gap, (vr + vc) / 2 - half_gap
    return np.sqrt(np.clip(1.0 - small / big, 0.0, 1.0))


def image_features(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """What one training image shows, as the numbers :func:`assign_groups` clusters on.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
        The raw image, as :func:`dsb.io.images.read_image` returns it.
    labels : (H, W) ndarray of int
        Its instance labels, 0 background.

    Returns
    -------
    (len(FEATURES),) ndarray of float64
        In the order of :data:`FEATURES`: log height and width; mean red, green
        and blue (equal for grey images) and the brightness and colourfulness
        of :func:`dsb.inference.preprocess.image_stats`; mean, standard deviation and
        99th percentile of the grey image; log median nucleus diameter, mean
        eccentricity, the share of nucleus pixels and log(1 + nuclei per
        10,000 pixels). Without nuclei the diameter and eccentricity are NaN.

    Raises
    ------
    ValueError
        ``labels`` is not the (H, W) of ``image``.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"`labels` (shape {labels.shape}) must have the (H, W) of `image` (shape {image.shape})")
    h, w = labels.shape
    scaled = as_float(image)
    if scaled.ndim == 3 and scaled.shape[2] >= 3:
        colour = scaled[..., :3].reshape(-1, 3).mean(axis=0)
    else:
        colour = np.repeat((scaled if scaled.ndim == 2 else scaled[..., 0]).mean(), 3)
    brightness, colourfulness = image_stats(image)
    grey = to_gray(image)
    diameters = nucleus_diameters(labels)
    n = diameters.size
    diameter = float(np.median(diameters)) if n else np.nan
    eccentricity = float(_eccentricities(labels).mean()) if n else np.nan
    coverage = float(np.count_nonzero(labels)) / labels.size
    return np.array(
        [
            np.log(h),
            np.log(w),
            *colour,
            brightness,
            colourfulness,
            grey.mean(),
            grey.std(),
            np.percentile(grey, 99),
            np.log(diameter),
            eccentricity,
            coverage,
            np.log1p(n * 1e4 / labels.size),
        ],
        dtype=np.float64,
    )


def _shares(counts: dict[str, int], n_groups: int, min_size: int) -> dict[str, int]:
    """Groups per type: 2 for each type with >= 2 * min_size images, 1 for the others,
    the rest by largest remainder in proportion to the images."""
    shares = {t: (2 if n >= 2 * min_size else 1) for t, n in counts.items()}
    spare = n_groups - sum(shares.values())
    if spare <= 0:
        return shares
    total = sum(counts.values())
    quota = {t: n_groups * n / total - shares[t] for t, n in counts.items()}
    # a type cannot have more groups of min_size images than it has images for
    room = {t: max(1, counts[t] // min_size) - shares[t] for t in counts}
    while spare > 0 and any(room[t] > 0 for t in counts):
        t = max((t for t in counts if room[t] > 0), key=lambda t: (quota[t], counts[t]))
        shares[t] += 1
        quota[t] -= 1
        room[t] -= 1
        spare -= 1
    return shares


def _cluster(x: np.ndarray, k: int, min_size: int) -> np.ndarray:
    """``k`` Ward clusters of the rows of ``x`` (standardised), none under ``min_size`` rows.

    The tree is cut finer until ``k`` clusters have ``min_size`` rows or more;
    the rows of smaller ones go to the nearest of those (by centroid).
    """
    n = len(x)
    if k <= 1 or n < 2:
        return np.zeros(n, np.int64)
    tree = hierarchy.linkage(x, method="ward")
    for m in range(k, n + 1):
        cut = hierarchy.fcluster(tree, m, criterion="maxclust")
        sizes = np.bincount(cut)
        big = np.flatnonzero(sizes >= min_size)
        if len(big) >= k:
            break
    centroids = np.stack([x[cut == b].mean(axis=0) for b in big])
    out = np.searchsorted(big, cut)
    small = ~np.isin(cut, big)
    if small.any():
        dist = ((x[small, None, :] - centroids[None]) ** 2).sum(axis=-1)
        out[small] = dist.argmin(axis=1)
    return out


def _standardise(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    for j in range(x.shape[1]):
        col = x[:, j]
        bad = ~np.isfinite(col)
        col[bad] = np.median(col[~bad]) if (~bad).any() else 0.0
        spread = col.std()
        x[:, j] = (col - col.mean()) / spread if spread > 1e-12 else 0.0
    return x


def _names(kind: str, members: list[np.ndarray], shapes: np.ndarray, diameters: np.ndarray) -> list[str]:
    """Readable names for the clusters of one type (see the module docstring)."""
    bases = []
    for idx in members:
        (shape, count), = Counter(map(tuple, shapes[idx])).most_common(1)
        bases.append(f"{kind}-{shape[0]}x{shape[1]}" if 2 * count >= len(idx) else f"{kind}-mixed")
    names = list(bases)
    for base in sorted(set(bases)):
        same = [j for j, b in enumerate(bases) if b == base]
        if len(same) == 1:
            continue
        order = sorted(same, key=lambda j: (np.nanmedian(diameters[members[j]]), -len(members[j])))
        words = {2: ("small", "large"), 3: ("small", "medium", "large")}.get(len(same))
        for rank, j in enumerate(order):
            names[j] = f"{base}-{words[rank]}" if words else f"{base}-{rank + 1}"
    return names


def assign_groups(
    ids: Sequence[str],
    types: Sequence[str],
    features: Sequence[np.ndarray] | np.ndarray,
    *,
    n_groups: int = N_GROUPS,
    min_size: int = 4,
) -> list[str]:
    """Cluster images into imaging-experiment groups, never mixing image types.

    Parameters
    ----------
    ids : sequence of str
        Image ids (unique); ties are broken by id, so the result does not
        depend on the order of the inputs.
    types : sequence of str
        Image type of each id (see :func:`dsb.inference.preprocess.image_type`).
    features : (N, len(FEATURES)) array_like of float
        :func:`image_features` of each id; NaN (no nucleus) counts as the
        median of the type.
    n_groups : int
        Groups in all, at least the number of types present (each type gets
        at least one, and two when it has ``2 * min_size`` images or more).
        Fewer come back when there are too few images for them.
    min_size : int
        Smallest group, in images (a type with fewer images is one group).

    Returns
    -------
    list of str
        Group name of each id, in the order of ``ids``.

    Raises
    ------
    ValueError
        Lengths differ, ids repeat, or ``n_groups`` or ``min_size`` is below 1.

    Examples
    --------
    >>> f = np.zeros((4, len(FEATURES))); f[2:, 0] = 1
    >>> assign_groups(["a", "b", "c", "d"], ["stained"] * 4, f, n_groups=2, min_size=2)
    ['stained-1x1', 'stained-1x1', 'stained-3x1', 'stained-3x1']
    """
    ids = [str(i) for i in ids]
    types = [str(t) for t in types]
    x = np.asarray(features, dtype=np.float64).reshape(len(ids), -1) if len(ids) else np.zeros((0, len(FEATURES)))
    if len(types) != len(ids):
        raise ValueError(f"`ids` ({len(ids)}) and `types` ({len(types)}) must have the same length")
    if len(set(ids)) != len(ids):
        raise ValueError("`ids` holds duplicates")
    if n_groups < 1 or min_size < 1:
        raise ValueError(f"`n_groups` ({n_groups}) and `min_size` ({min_size}) must be at least 1")
    if x.shape[1] != len(FEATURES):
        raise ValueError(f"`features` must have {len(FEATURES)} columns (FEATURES), got {x.shape[1]}")
    order = sorted(set(types), key=lambda t: (IMAGE_TYPES.index(t) if t in IMAGE_TYPES else len(IMAGE_TYPES), t))
    shares = _shares({t: types.count(t) for t in order}, n_groups, min_size)
    shapes = np.rint(np.exp(x[:, :2])).astype(np.int64)
    diameters = np.exp(x[:, FEATURES.index("log_diameter")])
    out = [""] * len(ids)
    for kind in order:
        idx = np.array(sorted((j for j, t in enumerate(types) if t == kind), key=lambda j: ids[j]))
        cut = _cluster(_standardise(x[idx]) * _WEIGHTS, shares[kind], min(min_size, len(idx)))
        # clusters numbered by their first id, so names do not hang on scipy's numbering
        first = {c: k for k, c in enumerate(dict.fromkeys(cut.tolist()))}
        members = [idx[cut == c] for c in first]
        if len(members) == 1:
            names = [kind]
        else:
            names = _names(kind, members, shapes, diameters)
            if all(n == f"{kind}-mixed" for n in names) or len(set(names)) < len(names):
                names = [f"{kind}-{k + 1}" for k in range(len(members))]
        for name, m in zip(names, members):
            for j in m:
                out[j] = name
    return out


def held_out_groups(groups: Sequence[str], types: Sequence[str], *, fraction: float, seed: int) -> list[str]:
    """Whole groups to hold out for validation: at least one of each type that has two or more.

    For each type with two or more groups, the candidates are the sets of its
    groups that hold out some but not all of them. With ``target = fraction *
    images of the type``, those whose image count misses the target by at
    most ``target / 2`` more than the closest one does are kept, and one is
    drawn with a generator seeded by ``(seed, type)``. So every such type keeps training
    groups and is validated on experiments it never trained on; since groups
    are whole experiments, the share held out is often above ``fraction``.
    Types with one group hold out nothing here (see
    :func:`dsb.training.loader.split_ids`).

    Parameters
    ----------
    groups, types : sequence of str
        Group and image type of each image (same length); a group must not
        span two types.
    fraction : float
        In [0, 1): the share of each type's images to aim for; 0 holds out nothing.
    seed : int

    Returns
    -------
    list of str
        Group names, sorted.

    Raises
    ------
    ValueError
        Lengths differ, ``fraction`` is out of range, or a group spans two types.
    """
    groups = [str(g) for g in groups]
    types = [str(t) for t in types]
    if len(groups) != len(types):
        raise ValueError(f"`groups` ({len(groups)}) and `types` ({len(types)}) must have the same length")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"`fraction` must be in [0, 1), got {fraction}")
    kind_of: dict[str, str] = {}
    for g, t in zip(groups, types):
        if kind_of.setdefault(g, t) != t:
            raise ValueError(f"group {g!r} holds images of two types ({kind_of[g]!r} and {t!r})")
    if fraction == 0.0:
        return []
    sizes = Counter(groups)
    held: list[str] = []
    for i, kind in enumerate(sorted(set(types))):
        names = sorted(g for g in sizes if kind_of[g] == kind)
        if len(names) < 2:
            continue
        total = sum(sizes[g] for g in names)
        target = fraction * total
        rng = np.random.default_rng([seed, i])
        if len(names) <= 12:
            subsets = [c for r in range(1, len(names)) for c in itertools.combinations(names, r)]
        else:  # too many to list: the proper prefixes of a seeded order
            order = [names[j] for j in rng.permutation(len(names))]
            subsets = [tuple(order[:r]) for r in range(1, len(names))]
        error = [abs(sum(sizes[g] for g in c) - target) for c in subsets]
        best = min(error)
        near = [c for c, e in zip(subsets, error) if e <= best + target / 2]
        held.extend(near[int(rng.integers(len(near)))])
    return sorted(held)
