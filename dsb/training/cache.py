"""The training cache: stage1_train (and annotated images of one's own) decoded once.

Decoding stage1_train (664 images, 28,986 mask PNGs) takes a while, so
:func:`prepare` does it once into a cache beside the data, which
:func:`load_prepared` reads back in seconds: the network's input as uint8 grey
(:func:`dsb.inference.preprocess.preprocess_image`), the instance labels, and a table of
image types, the median nucleus diameter and the imaging-experiment group of each
image (:mod:`dsb.training.groups`). The cache is rebuilt when the files (names, sizes, times) or the
preprocessing parameters change.

The cache takes annotated images of one's own as well, in the layouts that
napari, Fiji, Cellpose and StarDist write, alone or beside ``stage1_train/``
(:mod:`dsb.io.annotations` finds and reads them; each user folder is its own group).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dsb.core.atomic import atomic_dir, os_error
from dsb.core.errors import BadDataError
from dsb.core.progress import track
from dsb.inference.preprocess import IMAGE_TYPES, image_type, mixed_channels, preprocess_image, to_uint8
from dsb.io.annotations import find_samples, read_sample, user_group
from dsb.io.folders import folder_images
from dsb.io.images import MaskFixes, MaskFixWarning, binary_mask_note, image_path, read_image
from dsb.training.groups import FEATURES, N_GROUPS, assign_groups, image_features

__all__ = [
    "CACHE_VERSION",
    "Prepared",
    "cache_path",
    "read_prepared",
    "data_checksum",
    "prepare",
    "load_prepared",
    "load_groups",
    "image_types",
    "load_colour_images",
]


CACHE_VERSION = 5  # bump when the cache's content or format changes (5: signed images with negative values scaled
# from their own range, not clipped at 0, and binary masks taken object by object; 4: grey RGB images by level)


# Fields of PreprocessConfig that only shape the training targets and scale (made per crop), not the cache.
_NOT_CACHED = frozenset({"border_width", "contact_width", "contact_follows_size", "diameter"})


@dataclass(frozen=True)
class Prepared:
    """The prepared training images, as :func:`load_prepared` returns them.

    Attributes
    ----------
    path : Path
        The cache folder.
    ids : list of str
        Image ids, sorted.
    images : list of (H, W) ndarray of uint8
        The network's input (:func:`dsb.inference.preprocess.preprocess_image`) times 255.
    labels : list of (H, W) ndarray of int32
        Instance labels, 0 background, 1..N.
    types : list of str
        Image type of each image (one of :data:`dsb.inference.preprocess.IMAGE_TYPES`).
    diameters : list of float
        Median equivalent diameter ``sqrt(4 * area / pi)`` of the nuclei of each
        image, in pixels (NaN for an image without nuclei).
    groups : list of str
        Imaging-experiment group of each image (:func:`dsb.training.groups.assign_groups`);
        ``user:{folder}`` for annotated images of one's own (:mod:`dsb.io.annotations`).
    fixes : dict of str to MaskFixes
        The images whose masks needed fixing, by id.
    checksum : str
        sha256 over ids, shapes and pixels (what :func:`data_checksum`
        computes), to tell whether a run resumes on the same data.
    built : bool
        Whether this call built the cache (False: read back from disk).
    """

    path: Path
    ids: list[str]
    images: list[np.ndarray]
    labels: list[np.ndarray]
    types: list[str]
    fixes: dict[str, MaskFixes] = field(default_factory=dict)
    checksum: str = ""
    built: bool = False
    diameters: list[float] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def summary(self) -> str:
        """A few lines for people: counts by type, nuclei, and mask fixes."""
        nuclei = sum(int(lab.max(initial=0)) for lab in self.labels)
        return _summary(self.ids, self.types, nuclei, self.fixes, self.groups, self.diameters)


def _summary(ids, types, nuclei: int, fixes: dict, groups=(), diameters=()) -> str:
    counts = ", ".join(f"{types.count(t)} {t}" for t in IMAGE_TYPES)
    lines = [f"{len(ids)} images ({counts}), {nuclei} nuclei"]
    lines += _group_lines(types, groups, diameters)
    if fixes:
        overlaps = [f for f in fixes.values() if f.overlapping]
        empty = sum(len(f.empty) for f in fixes.values())
        covered = sum(len(f.covered) for f in fixes.values())
        binary = sum(len(f.binary) for f in fixes.values())
        lines.append(
            f"mask fixes: {len(overlaps)} image(s) with overlapping masks "
            f"({sum(f.overlap_pixels for f in overlaps)} pixel(s) kept by the earlier mask), "
            f"{empty} empty mask(s) skipped, {covered} mask(s) inside others skipped"
            + (f", {binary} binary mask(s) taken object by object" if binary else "")
        )
        for image_id, f in sorted(fixes.items()):
            lines.append(f"  {image_id}: {f}")
    else:
        lines.append("mask fixes: none needed")
    return "\n".join(lines)


def _group_lines(types, groups, diameters) -> list[str]:
    """One line per group: name, type, images and median nucleus diameter."""
    if not groups:
        return []
    lines = [f"{len(set(groups))} imaging-experiment groups:"]
    for name in sorted(set(groups), key=lambda g: (IMAGE_TYPES.index(types[groups.index(g)]), g)):
        idx = [j for j, g in enumerate(groups) if g == name]
        d = np.asarray([diameters[j] for j in idx], dtype=float) if diameters else np.array([np.nan])
        diam = float(np.nanmedian(d)) if np.isfinite(d).any() else float("nan")
        lines.append(f"  group {name}: {len(idx)} {types[idx[0]]} images, median nucleus diameter {diam:.1f} px")
    return lines


def _cache_key(config) -> tuple[str, dict]:
    # No channel picked leaves the key as it was before there was the choice, so old caches stay valid.
    params = {k: v for k, v in dataclasses.asdict(config).items()
              if k not in _NOT_CACHED and not (k == "channel" and v is None)}
    key = json.dumps({"version": CACHE_VERSION, "preprocess": params}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12], params


def cache_path(data_dir, config, *, cache_dir=None) -> Path:
    """Where :func:`prepare` keeps the cache for ``config``: ``{cache_dir}/prepared-{hash}``.

    ``cache_dir`` defaults to ``{data_dir}/.cache``.
    """
    root = Path(data_dir) / ".cache" if cache_dir is None else Path(cache_dir)
    return root / f"prepared-{_cache_key(config)[0]}"


def _fingerprint(stage_dir: Path, ids: list[str]) -> str:
    """sha256 of the names, sizes and modification times of every image and mask file."""
    h = hashlib.sha256()
    for image_id in ids:
        for sub in ("images", "masks"):
            folder = stage_dir / image_id / sub
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except FileNotFoundError:
                continue
            for e in entries:
                st = e.stat()
                h.update(f"{image_id}/{sub}/{e.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _samples_fingerprint(stage_dir: Path | None, samples) -> str:
    """:func:`_fingerprint` of the stage samples, extended by the user samples' image and label files.

    Without user samples it is :func:`_fingerprint` itself, so a cache of the
    competition's images alone stays valid.
    """
    stage = _fingerprint(stage_dir, [s.id for s in samples if not s.user]) if stage_dir is not None else ""
    users = [s for s in samples if s.user]
    if not users:
        return stage
    h = hashlib.sha256(stage.encode())
    for s in users:
        for path in (s.image, s.labels):
            st = path.stat()
            h.update(f"{s.id}|{path.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _stage_of(samples) -> Path | None:
    """The stage folder of the competition's samples (``{stage}/{id}/images/{id}.png``), if any."""
    stage = next((s for s in samples if not s.user), None)
    return None if stage is None else stage.image.parents[2]


def _prepare_one(task):
    """Decode one training image and its labels (runs in a worker process)."""

    sample, config = task
    raw, labels, fixes = read_sample(sample, config.channel)
    if labels.max(initial=0) > np.iinfo(np.uint16).max:
        where = sample.labels if sample.user else sample.labels.parent
        raise BadDataError(f"{labels.max()} nuclei: more than the cache can hold (65535)", path=where)
    kind = image_type(raw)
    gray = to_uint8(preprocess_image(raw, config, kind=kind))
    # One's own image read whole whose channels look like separate stains, as dsb segment warns of it.
    mixed = mixed_channels(raw) if sample.user and config.channel is None else None
    return sample.id, gray, labels.astype(np.uint16), kind, fixes, image_features(raw, labels), (sample.image, mixed)


def data_checksum(ids, images, labels) -> str:
    """sha256 over ids, shapes and pixels of images and int32 labels, in id order.

    A run records it, so that ``--resume`` can refuse data that changed.
    """
    h = hashlib.sha256()
    for i in sorted(range(len(ids)), key=lambda k: ids[k]):
        image = np.ascontiguousarray(images[i])
        lab = np.ascontiguousarray(labels[i], dtype=np.int32)
        h.update(f"{ids[i]}|{image.shape}|{image.dtype}|{lab.dtype}|".encode())
        h.update(memoryview(image).cast("B"))
        h.update(memoryview(lab).cast("B"))
    return h.hexdigest()


def _read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _decode_all(samples, config, *, workers: int, progress: bool):

    tasks = [(s, config) for s in samples]
    context = _fork_context() if workers > 1 else None
    if context is None:
        yield from track(map(_prepare_one, tasks), length=len(tasks), label="prepare", enabled=progress)
        return
    with context.Pool(workers) as pool:
        results = pool.imap(_prepare_one, tasks, chunksize=4)
        yield from track(results, length=len(tasks), label="prepare", enabled=progress)


def _fork_context():
    """A "fork" multiprocessing context where forking is safe, else None (decode serially).

    Not "spawn": it re-imports the caller's main module, which loops forever in
    scripts without an ``if __name__ == "__main__"`` guard. And no fork once a
    threaded runtime (TensorFlow, JAX) is loaded: a forked child can deadlock.
    """
    import multiprocessing
    import threading

    if "fork" not in multiprocessing.get_all_start_methods() or threading.active_count() > 1:
        return None
    if any(name in sys.modules for name in ("tensorflow", "jax", "torch")):
        return None
    return multiprocessing.get_context("fork")


def prepare(data_dir, config=None, *, progress: bool = False, cache_dir=None, workers: int | None = None) -> Path:
    """Decode the training images and masks once into a cache; return its folder.

    Nothing is done when an up-to-date cache exists. The cache is rebuilt when
    the image or mask files (names, sizes, modification times) or the
    preprocessing parameters change; it is written to a temporary folder and
    renamed into place, so an interrupted run never leaves a cache that looks
    complete.

    Parameters
    ----------
    data_dir : str or os.PathLike
        The folder ``dsb fetch`` filled (with ``stage1_train/``), a stage
        folder itself, or annotated images of one's own, alone or beside
        ``stage1_train/`` (see :func:`dsb.io.annotations.find_samples`).
    config : dsb.core.config.PreprocessConfig, optional
        Preprocessing parameters (defaults to ``PreprocessConfig()``).
    progress : bool
        Draw a progress bar while building, and print a summary of the mask
        fixes (overlaps, empty masks) on stderr.
    cache_dir : str or os.PathLike, optional
        Where caches go; default ``{data_dir}/.cache``.
    workers : int, optional
        Processes that decode in parallel; default min(2, CPUs).

    Returns
    -------
    Path
        The cache folder: ``images.npz`` (uint8 (H, W) by id), ``labels.npz``
        (uint16 (H, W) by id), ``types.csv`` (ImageId,type,height,width),
        ``groups.csv`` (ImageId,group,diameter and the grouping features of
        :mod:`dsb.training.groups`) and ``manifest.json`` (parameters, data fingerprint, counts, fixes), the
        last written last.

    Raises
    ------
    BadDataError
        No training images, or an unreadable image or mask (naming the file).
    EnvironmentProblem
        The cache folder cannot be written.
    """
    return _prepare(data_dir, config, progress=progress, cache_dir=cache_dir, workers=workers)[0]


def _prepare(data_dir, config, *, progress, cache_dir, workers) -> tuple[Path, dict, bool]:
    if config is None:
        from dsb.core.config import PreprocessConfig

        config = PreprocessConfig()
    config = getattr(config, "preprocess", config)  # a whole Config will do

    data_dir = Path(data_dir)
    samples = find_samples(data_dir)
    stage_dir = _stage_of(samples)
    ids = [s.id for s in samples]
    folder = cache_path(data_dir, config, cache_dir=cache_dir)
    fingerprint = _samples_fingerprint(stage_dir, samples)
    manifest = _read_manifest(folder)
    manifest = manifest or {}
    if manifest.get("fingerprint") == fingerprint and manifest.get("version") == CACHE_VERSION:
        return folder, manifest, False

    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    start = time.perf_counter()
    images, labels, types, fixes, features = {}, {}, {}, {}, {}
    decoded = _decode_all(samples, config, workers=workers, progress=progress)
    mixed = []
    for image_id, gray, lab, kind, fix, feats, (path, why) in decoded:
        images[image_id], labels[image_id], types[image_id], features[image_id] = gray, lab, kind, feats
        if fix:
            fixes[image_id] = fix
        if why:
            mixed.append((path, why))
    groups = _sample_groups(samples, types, features)
    ids = sorted(ids)
    checksum = data_checksum(ids, [images[i] for i in ids], [labels[i] for i in ids])
    nuclei = int(sum(int(labels[i].max(initial=0)) for i in ids))
    manifest = {
        "version": CACHE_VERSION,
        "preprocess": _cache_key(config)[1],
        "stage_dir": None if stage_dir is None else str(stage_dir.resolve()),
        "fingerprint": fingerprint,
        "checksum": checksum,
        "images": len(ids),
        "nuclei": nuclei,
        "types": {t: sum(1 for i in ids if types[i] == t) for t in IMAGE_TYPES},
        "groups": {g: sum(1 for i in ids if groups[i] == g) for g in sorted(set(groups.values()))},
        "n_groups": N_GROUPS,
        "fixes": {i: f.to_dict() for i, f in sorted(fixes.items())},
        "build_seconds": None,
    }
    if any(s.user for s in samples):
        manifest["user_images"] = {s.id: str(s.image.resolve()) for s in samples if s.user}
    with atomic_dir(folder) as tmp:
        try:
            # Images barely compress (2x) and compressing them took a quarter of the build and
            # most of the load; labels shrink 100x and decompress fast.
            np.savez(tmp / "images.npz", **images)
            np.savez_compressed(tmp / "labels.npz", **labels)
            rows = ["ImageId,type,height,width"] + [
                f"{i},{types[i]},{images[i].shape[0]},{images[i].shape[1]}" for i in ids
            ]
            (tmp / "types.csv").write_text("\n".join(rows) + "\n")
            (tmp / "groups.csv").write_text(_groups_csv(ids, groups, features))
            manifest["build_seconds"] = round(time.perf_counter() - start, 1)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        except OSError as exc:
            raise os_error(exc, folder) from exc
    if progress:
        import click

        fix_objs = {i: MaskFixes.from_dict(f) for i, f in manifest["fixes"].items()}
        diameters = [_diameter(features[i]) for i in ids]
        click.echo(_summary(ids, [types[i] for i in ids], nuclei, fix_objs, [groups[i] for i in ids], diameters), err=True)
    if mixed:
        import warnings

        path, why = mixed[0]
        more = f" (and {len(mixed) - 1} more of your images)" if len(mixed) > 1 else ""
        warnings.warn(f"{path}{more}: {why}. dsb train reads such an image as dsb segment does; give --channel N to "
                      "learn from the DNA stain's channel", stacklevel=2)
    binary = [(s.labels, fixes[s.id].binary[0][1]) for s in samples if s.id in fixes and fixes[s.id].binary]
    if binary:
        import warnings

        more = f" (and {len(binary) - 1} more of your label files)" if len(binary) > 1 else ""
        warnings.warn(f"{binary[0][0]}{more}: {binary_mask_note(binary[0][1])}", MaskFixWarning, stacklevel=2)
    empty = [s.labels for s in samples if s.user and not labels[s.id].any()]
    if empty:
        import warnings

        more = f" (and {len(empty) - 1} more of your label files)" if len(empty) > 1 else ""
        warnings.warn(f"{empty[0]}{more}: holds no nucleus, so all of its image is learnt as background: right for "
                      "a field without nuclei, wrong for the label file of another image or an empty export",
                      stacklevel=2)
    return folder, manifest, True


_DIAMETER = FEATURES.index("log_diameter")


def _sample_groups(samples, types: dict, features: dict) -> dict[str, str]:
    """Groups of the competition's images by :func:`dsb.training.groups.assign_groups`, and of each user folder
    its own (:func:`dsb.io.annotations.user_group`), so user images never join the competition's."""

    stage = sorted(s.id for s in samples if not s.user)
    groups = dict(zip(stage, assign_groups(stage, [types[i] for i in stage], [features[i] for i in stage])))
    users = [s for s in samples if s.user]
    kinds: dict[str, set] = {}
    for s in users:
        kinds.setdefault(s.source, set()).add(types[s.id])
    for s in users:
        groups[s.id] = user_group(s.source, types[s.id], len(kinds[s.source]))
    return groups


def _diameter(features: np.ndarray) -> float:
    return float(np.exp(features[_DIAMETER]))


def _groups_csv(ids, groups: dict, features: dict) -> str:
    """``groups.csv``: ImageId, group, median nucleus diameter (px), then the features of the grouping."""
    rows = [",".join(("ImageId", "group", "diameter") + FEATURES)]
    for i in ids:
        values = [f"{_diameter(features[i]):.4f}"] + [f"{v:.6g}" for v in features[i]]
        rows.append(",".join([i, groups[i]] + values))
    return "\n".join(rows) + "\n"


def _read_groups_csv(path: Path) -> dict[str, tuple[str, float]]:
    """ImageId -> (group, diameter) from ``groups.csv``."""
    out = {}
    lines = path.read_text().splitlines()
    if not lines or not lines[0].startswith("ImageId,group,diameter"):
        raise ValueError(f"header is not ImageId,group,diameter,...: {lines[:1]}")
    for n, line in enumerate(lines[1:], start=2):
        cells = line.split(",")
        if len(cells) < 3:
            raise ValueError(f"row {n} has {len(cells)} cells, expected at least 3")
        out[cells[0]] = (cells[1], float(cells[2]))
    return out


def load_prepared(
    data_dir, config=None, *, progress: bool = False, cache_dir=None, workers: int | None = None
) -> Prepared:
    """The prepared training images, building or refreshing the cache first if needed.

    Parameters are those of :func:`prepare`.

    Returns
    -------
    Prepared
        ``ids`` sorted; ``images`` uint8 (H, W); ``labels`` int32 (H, W);
        ``types``; ``diameters`` (median nucleus diameter, px); ``groups``
        (imaging-experiment group names); ``fixes``; ``checksum``; ``path``.
    """
    folder, manifest, built = _prepare(data_dir, config, progress=progress, cache_dir=cache_dir, workers=workers)
    return read_prepared(folder, manifest, built=built)


def read_prepared(folder, manifest: dict | None = None, *, built: bool = False) -> Prepared:
    """The prepared images of a cache folder as it is, without the stage folder it was built from.

    For a cache copied to another machine (a GPU machine lent for a while, say);
    :func:`load_prepared` checks and rebuilds it first. Colour augmentation still
    reads the stained images from the ``stage_dir`` its ``manifest.json`` names.

    Parameters
    ----------
    folder : str or os.PathLike
        A folder :func:`prepare` wrote.
    manifest : dict, optional
        Its ``manifest.json``, when already read.
    built : bool
        Recorded as ``Prepared.built``.

    Raises
    ------
    BadDataError
        A file of the folder is missing or damaged (naming the folder).
    """
    folder = Path(folder)
    if manifest is None:
        manifest = _read_manifest(folder)
        if manifest is None:
            raise BadDataError("no readable manifest.json; run `dsb prepare` again", path=folder)
    try:
        with np.load(folder / "images.npz") as zi, np.load(folder / "labels.npz") as zl:
            ids = sorted(zi.files)
            images = [zi[i] for i in ids]
            labels = [zl[i].astype(np.int32) for i in ids]
        rows = (folder / "types.csv").read_text().splitlines()[1:]
        grouping = _read_groups_csv(folder / "groups.csv")
    except (OSError, ValueError, KeyError, zlib.error) as exc:
        raise BadDataError(
            f"prepared cache is damaged ({exc}); delete the folder and run `dsb prepare` again", path=folder
        ) from None
    kinds = dict(row.split(",")[:2] for row in rows)
    fixes = {i: MaskFixes.from_dict(f) for i, f in manifest.get("fixes", {}).items()}
    return Prepared(
        path=folder,
        ids=ids,
        images=images,
        labels=labels,
        types=[kinds.get(i, "") for i in ids],
        fixes=fixes,
        checksum=manifest.get("checksum", ""),
        built=built,
        diameters=[grouping.get(i, ("", float("nan")))[1] for i in ids],
        groups=[grouping.get(i, ("", 0.0))[0] for i in ids],
    )


def load_groups(data_dir, config=None, *, progress: bool = False) -> tuple[dict[str, str], dict[str, float]]:
    """The imaging-experiment group and median nucleus diameter of every training image.

    Groups cluster the whole stage folder (:func:`dsb.training.groups.assign_groups`),
    so they come from the training cache, built first when missing or out of
    date (as :func:`prepare` does; seconds when it is up to date).

    Parameters
    ----------
    data_dir, config, progress
        As for :func:`prepare`.

    Returns
    -------
    groups : dict of str to str
        ``ImageId -> group``.
    diameters : dict of str to float
        ``ImageId -> median nucleus diameter`` in pixels.

    Raises
    ------
    BadDataError
        As :func:`prepare`, or the cache's ``groups.csv`` is damaged.
    """
    folder = _prepare(data_dir, config, progress=progress, cache_dir=None, workers=None)[0]
    try:
        rows = _read_groups_csv(folder / "groups.csv")
    except (OSError, ValueError) as exc:
        raise BadDataError(
            f"prepared cache is damaged ({exc}); delete the folder and run `dsb prepare` again", path=folder
        ) from None
    return {i: g for i, (g, _) in rows.items()}, {i: d for i, (_, d) in rows.items()}


def image_types(stage_dir, ids=None) -> dict[str, str]:
    """The image type of each image of a stage folder (see :func:`dsb.inference.preprocess.image_type`).

    Parameters
    ----------
    stage_dir : str or os.PathLike
        A folder in stage layout (``{id}/images/{id}.png``), or a flat folder of images (the id being
        the file name without its suffix), as :func:`dsb.io.folders.folder_images` reads them.
    ids : iterable of str, optional
        The images to classify; all of the folder by default.

    Returns
    -------
    dict of str to str
        ``ImageId -> "fluorescence" | "brightfield" | "stained"``.
    """
    stage_dir = Path(stage_dir)
    if ids is not None:
        return {i: image_type(read_image(image_path(stage_dir, i))) for i in ids}
    images, problems = folder_images(stage_dir)
    if problems:
        raise problems[0]
    return {i: image_type(read_image(path)) for i, path in images.items()}


def load_colour_images(prepared, kinds=("stained",), *, stage_dir=None) -> dict[str, np.ndarray]:
    """The raw RGB of the prepared images of some types, for colour augmentation.

    The cache holds only the grey network input; this reads the original
    images again from the stage folder the cache was built from.

    Parameters
    ----------
    prepared : Prepared
        Or anything with ``path`` (the cache folder), ``ids`` and ``types``.
    kinds : tuple of str
        The image types to read (see :data:`dsb.inference.preprocess.IMAGE_TYPES`).
    stage_dir : str or os.PathLike, optional
        Where the competition's images are; default: ``stage_dir`` of the
        cache's ``manifest.json``. User images (:mod:`dsb.io.annotations`) are
        read from the files its ``user_images`` names.

    Returns
    -------
    dict of str to (H, W, 3) ndarray of uint8
        By image id; alpha dropped.

    Raises
    ------
    BadDataError
        The manifest is missing or has no ``stage_dir``, or an image file is
        missing or unreadable (naming it).
    """
    unknown = sorted(set(kinds) - set(IMAGE_TYPES))
    if unknown:
        raise ValueError(f"`kinds` holds {unknown[0]!r}, expected some of {', '.join(IMAGE_TYPES)}")
    wanted = [(i, k) for i, k in zip(prepared.ids, prepared.types) if k in kinds]
    user_images: dict = {}
    if stage_dir is None:
        folder = Path(prepared.path)
        manifest = _read_manifest(folder)
        if manifest is None:
            raise BadDataError("no readable manifest.json; run `dsb prepare` again", path=folder)
        user_images = manifest.get("user_images") or {}
        if not manifest.get("stage_dir") and any(i not in user_images for i, _ in wanted):
            raise BadDataError(
                "has no key 'stage_dir' (the folder of the raw images); run `dsb prepare` again",
                path=folder / "manifest.json",
            )
        stage_dir = manifest.get("stage_dir")
    if stage_dir is not None:
        stage_dir = Path(stage_dir)
        if not stage_dir.is_dir():
            raise BadDataError(
                "folder of the raw images not found (recorded in the cache's manifest.json, key 'stage_dir')",
                path=stage_dir,
            )
    colour = {}
    for image_id, kind in wanted:
        path = Path(user_images[image_id]) if image_id in user_images else image_path(stage_dir, image_id)
        raw = read_image(path)
        if raw.ndim != 3 or raw.shape[2] < 3:
            raise BadDataError(f"is {kind} in the cache but has no colour channels (shape {raw.shape})", path=path)
        rgb = raw[..., :3]
        if rgb.dtype != np.uint8:
            from dsb.inference.preprocess import as_float

            rgb = to_uint8(as_float(rgb))
        colour[image_id] = rgb
    return colour
