"""Synthetic microscope fields with their true nuclei, made by the project itself.

For tests, benchmarks, sample data and pictures: what the competition data lacks
(nuclei 100 pixels across, fields of several hundred touching nuclei) can be
made here at any size, with the truth known exactly; :func:`nuclei_volume` makes a z-stack of
whole nuclei for ``dsb segment --stitch``, and :func:`write_plate` stores fields as an OME-Zarr
screening plate. No competition image goes into them.

>>> image, labels = nuclei_field((128, 128), diameter=20, seed=1)
>>> image.shape, image.dtype, int(labels.max()) > 5
((128, 128), dtype('uint8'), True)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from dsb.core.labels import renumber

__all__ = ["KINDS", "nuclei_field", "nuclei_volume", "write_plate"]

KINDS = ("fluorescence", "brightfield", "stained")


def _centres(rng: np.random.Generator, extent, diameter: float, count: int, spacing: float,
             margin: float = 0.0) -> np.ndarray:
    """Up to ``count`` centres at least ``spacing * diameter`` apart, ``margin`` or more inside a box of
    ``extent`` (in 2-D or 3-D; dart throwing, vectorised per batch)."""
    extent = np.asarray(extent, float)
    chosen = np.empty((0, extent.size))
    for _ in range(20):
        if len(chosen) >= count:
            break
        darts = rng.uniform(np.full(extent.size, margin), extent - margin, size=(4 * count, extent.size))
        for dart in darts:
            if len(chosen) >= count:
                break
            if not len(chosen) or np.min(np.sqrt(((chosen - dart) ** 2).sum(axis=1))) >= spacing * diameter:
                chosen = np.vstack([chosen, dart])
    return chosen


def _mixed_centres(rng: np.random.Generator, shape, diameter: float, count: int, spacing: float,
                   spread: float) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` centres and diameters, each diameter ``diameter * 2 ** u`` (``u`` uniform in
    ``[-spread, spread]``), two nuclei ``(d1 + d2) / 2 + (spacing - 1) * min(d1, d2)`` apart or more:
    neighbours of any two sizes overlap (or keep apart) by the same share of the smaller one."""
    h, w = shape
    chosen, sizes = np.empty((0, 2)), np.empty(0)
    for _ in range(20):
        if len(chosen) >= count:
            break
        darts = rng.uniform([0, 0], [h, w], size=(4 * count, 2))
        darts_d = diameter * 2.0 ** rng.uniform(-spread, spread, size=4 * count)
        for dart, d in zip(darts, darts_d):
            if len(chosen) >= count:
                break
            inside = d / 4 <= dart[0] <= h - d / 4 and d / 4 <= dart[1] <= w - d / 4
            apart = (sizes + d) / 2 + (spacing - 1) * np.minimum(sizes, d)
            if inside and (not len(chosen) or np.all(np.hypot(*(chosen - dart).T) >= apart)):
                chosen, sizes = np.vstack([chosen, dart]), np.append(sizes, d)
    return chosen, sizes


def nuclei_field(
    shape: tuple[int, int],
    diameter: float,
    *,
    count: int | None = None,
    touching: bool = False,
    kind: str = "fluorescence",
    texture: float = 0.3,
    elongation: float = 1.5,
    size_spread: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A field of elliptical nuclei with inner texture, and its instance labels.

    Parameters
    ----------
    shape : (int, int)
        Height and width in pixels.
    diameter : float
        The nuclei's median equivalent diameter in pixels; each varies by about 15 %
        and is elongated up to ``elongation`` : 1.
    count : int, optional
        How many nuclei to place; by default as many as fill about a fifth of the field
        (half of it when ``touching``).
    touching : bool
        Pack the nuclei so that neighbours touch (centres 0.8 diameters apart), as in a
        crowded field; otherwise they keep 1.3 diameters apart.
    kind : str
        ``"fluorescence"`` (bright nuclei on dark, grey), ``"brightfield"`` (dark nuclei on
        light, grey) or ``"stained"`` (purple nuclei on pink, RGB).
    texture : float
        Strength of the chromatin-like texture inside each nucleus (0 for flat nuclei):
        large nuclei with texture are what a network at the wrong scale reads as many small ones.
    elongation : float
        The longest nuclei's length over width, at least 1 (each draws its own between
        1 and this): 3 or 4 for the rod-like nuclei of some cell lines.
    size_spread : float
        Octaves of nucleus size in one field: above 0, each nucleus is ``diameter`` times
        ``2 ** u``, ``u`` uniform in ``[-size_spread, size_spread]`` (1: from half to twice
        ``diameter``), and neighbours touch or keep apart by a share of the smaller one: small
        nuclei packed against large ones, as in fields of mixed cell types. 0: one size.
    seed : int
        The same seed gives the same field.

    Returns
    -------
    image : (H, W) ndarray of uint8, or (H, W, 3) for ``"stained"``
    labels : (H, W) ndarray of int32
        0 background, 1..N nuclei; where two overlap, the later one is cut back.
    """
    if kind not in KINDS:
        raise ValueError(f"`kind` is {kind!r}; expected one of {', '.join(KINDS)}")
    if not diameter > 0:
        raise ValueError(f"`diameter` is {diameter}; it must be greater than 0")
    if not elongation >= 1:
        raise ValueError(f"`elongation` is {elongation}; it must be at least 1")
    if not 0 <= size_spread <= 4:
        raise ValueError(f"`size_spread` is {size_spread}; it must be between 0 and 4 octaves")
    rng = np.random.default_rng(seed)
    h, w = (int(n) for n in shape)
    area = np.pi * diameter**2 / 4
    if count is None:
        count = max(1, int((0.5 if touching else 0.2) * h * w / area))
    spacing = 0.8 if touching else 1.3
    if size_spread:
        centres, sizes = _mixed_centres(rng, (h, w), diameter, count, spacing, size_spread)
    else:
        centres, sizes = _centres(rng, (h, w), diameter, count, spacing, margin=diameter / 4), None
    labels = np.zeros((h, w), np.int32)
    brightness = np.zeros((h, w), np.float32)
    for label, (cy, cx) in enumerate(centres, start=1):
        d = diameter * rng.uniform(0.85, 1.15) if sizes is None else sizes[label - 1]
        elong = rng.uniform(1.0, elongation)
        a, b = d / 2 * np.sqrt(elong), d / 2 / np.sqrt(elong)  # semi-axes of the same area
        theta = rng.uniform(0, np.pi)
        r0, r1 = int(max(0, cy - a - 1)), int(min(h, cy + a + 2))
        c0, c1 = int(max(0, cx - a - 1)), int(min(w, cx + a + 2))
        yy, xx = np.mgrid[r0:r1, c0:c1]
        u = ((xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)) / a
        v = (-(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)) / b
        inside = (u**2 + v**2 <= 1) & (labels[r0:r1, c0:c1] == 0)
        labels[r0:r1, c0:c1][inside] = label
        brightness[r0:r1, c0:c1][inside] = rng.uniform(0.45, 0.9)
    if texture:
        # Chromatin: blobs a tenth of a nucleus across, so large nuclei hold many of them.
        grain = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), max(1.0, diameter / 12)).astype(np.float32)
        grain /= grain.std() + 1e-6
        brightness *= np.clip(1 + texture * grain, 0.2, 2.0)
    signal = ndimage.gaussian_filter(brightness, max(0.7, diameter / 40))
    noise = rng.normal(0, 0.02, (h, w)).astype(np.float32)
    if kind == "fluorescence":
        image = np.clip(signal + 0.05 + noise, 0, 1)
    elif kind == "brightfield":
        image = np.clip(0.85 - 0.6 * signal + noise, 0, 1)
    else:
        nucleus = np.array([0.45, 0.25, 0.6], np.float32)  # haematoxylin purple
        ground = np.array([0.93, 0.75, 0.85], np.float32)  # eosin pink
        mix = np.clip(signal / 0.9, 0, 1)[:, :, None]
        image = np.clip(ground * (1 - mix) + nucleus * mix + noise[:, :, None], 0, 1)
    labels, _ = renumber(labels)  # a nucleus wholly covered by earlier ones leaves no gap
    return (image * 255).round().astype(np.uint8), labels


def nuclei_volume(
    shape: tuple[int, int, int],
    diameter: float,
    *,
    z_step: float = 2.0,
    count: int | None = None,
    spacing: float = 1.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence z-stack of ellipsoidal nuclei, and their 3-D labels.

    Parameters
    ----------
    shape : (int, int, int)
        Planes, height and width.
    diameter : float
        The nuclei's median diameter in pixels (each varies by about 15 %, a little flattened along
        z, as nuclei on a coverslip are).
    z_step : float
        The distance between planes in pixels' sides: a nucleus spans about ``diameter / z_step``
        planes.
    count : int, optional
        How many nuclei to place; by default as many as fill about a tenth of the volume.
    spacing : float
        The least distance between two centres in diameters: below 1, neighbours touch.
    seed : int

    Returns
    -------
    image : (Z, H, W) ndarray of uint8
        Each plane a section through the nuclei, blurred along z by the light of the planes beside
        it, with chromatin texture and noise.
    labels : (Z, H, W) ndarray of int32
        0 background, 1..N nuclei, one label each through all its planes.

    >>> image, labels = nuclei_volume((8, 64, 64), diameter=16, seed=1)
    >>> image.shape, int(labels.max()) > 2, len(np.unique(np.nonzero(labels == 1)[0])) > 1
    ((8, 64, 64), True, True)
    """
    if not diameter > 0 or not z_step > 0:
        raise ValueError(f"`diameter` ({diameter}) and `z_step` ({z_step}) must be greater than 0")
    rng = np.random.default_rng(seed)
    depth, h, w = (int(n) for n in shape)
    extent = np.array([depth * z_step, h, w], float)  # in pixels' sides
    if count is None:
        count = max(1, int(0.1 * np.prod(extent) / (np.pi / 6 * diameter ** 3)))
    chosen = _centres(rng, extent, diameter, count, spacing)
    labels = np.zeros((depth, h, w), np.int32)
    brightness = np.zeros((depth, h, w), np.float32)
    for label, (cz, cy, cx) in enumerate(chosen, start=1):
        d = diameter * rng.uniform(0.85, 1.15)
        radii = np.array([0.4, 0.5, 0.5]) * d * np.array([1.0, *rng.uniform(0.9, 1.1, 2)])
        # Its box: planes, rows and columns within its radii.
        box = tuple(slice(max(0, int((c - r) / s)), min(n, int((c + r) / s) + 2))
                    for c, r, s, n in zip((cz, cy, cx), radii, (z_step, 1, 1), (depth, h, w)))
        zz, yy, xx = np.ogrid[box]
        inside = ((zz * z_step - cz) / radii[0]) ** 2 + ((yy - cy) / radii[1]) ** 2 + ((xx - cx) / radii[2]) ** 2 <= 1
        inside &= labels[box] == 0
        labels[box][inside] = label
        brightness[box][inside] = rng.uniform(0.45, 0.9)
    grain = ndimage.gaussian_filter(rng.normal(0, 1, (depth, h, w)), (0.5, *(2 * [max(1.0, diameter / 12)])))
    brightness *= np.clip(1 + 0.3 * grain / (grain.std() + 1e-6), 0.2, 2.0).astype(np.float32)
    # Out-of-focus light: a plane's sections glow into their neighbours, more across than along.
    signal = ndimage.gaussian_filter(brightness, (max(0.5, 0.15 * diameter / z_step), *(2 * [max(0.7, diameter / 40)])))
    image = np.clip(signal + 0.05 + rng.normal(0, 0.02, signal.shape), 0, 1)
    labels, _ = renumber(labels)
    return (image * 255).round().astype(np.uint8), labels


def write_plate(path, wells: dict, *, axes: str = "tczyx", pixel_size: float | None = None,
                version: str = "0.4") -> list[Path]:
    """Store images as an OME-Zarr high-content screening plate (needs the ``zarr`` package).

    Parameters
    ----------
    path : str or os.PathLike
        The plate's folder (``plate.ome.zarr``); replaced if it exists.
    wells : dict of (str, str) to sequence of ndarray
        Each well's ``(row, column)`` names and its fields' arrays, stored as they are, with ``axes``.
    axes : str
        The fields' axis names, one letter each: ``"tczyx"`` (OME-NGFF's order), ``"yx"``, ``"czyx"``...
    pixel_size : float, optional
        Micrometres a pixel, as each field's y and x scale (``micrometer`` units); none without it.
    version : str
        ``"0.4"`` (Zarr format 2, metadata at the top of the attributes) or ``"0.5"`` (Zarr format 3,
        metadata under ``ome``).

    Returns
    -------
    list of Path
        Each field's image group, in the order given.
    """
    import zarr

    path = Path(path)
    root = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)

    def put(group, key: str, value) -> None:
        if version == "0.4":
            group.attrs[key] = value
        else:
            group.attrs["ome"] = {**group.attrs.get("ome", {}), "version": "0.5", key: value}

    unit = {} if pixel_size is None else {"unit": "micrometer"}
    meta_axes = [{"name": a, "type": "space", **unit} if a in "yx" else
                 {"name": a, "type": {"t": "time", "c": "channel"}.get(a, "space")} for a in axes]
    scale = [1.0 if a not in "yx" or pixel_size is None else float(pixel_size) for a in axes]
    fields, rows, columns = [], [], []
    for (row, column), images in wells.items():
        rows += [row] if row not in rows else []
        columns += [column] if column not in columns else []
        well = root.require_group(row).require_group(column)
        put(well, "well", {"images": [{"path": str(i)} for i in range(len(images))]})
        for i, data in enumerate(images):
            data = np.asarray(data)
            if data.ndim != len(axes):
                raise ValueError(f"a field of shape {data.shape} for axes {axes!r}")
            group = well.require_group(str(i))
            group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=data.shape)[...] = data
            put(group, "multiscales", [{"version": version, "axes": meta_axes, "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}])
            fields.append(path / row / column / str(i))
    put(root, "plate", {"rows": [{"name": r} for r in rows], "columns": [{"name": c} for c in columns],
                        "wells": [{"path": f"{r}/{c}", "rowIndex": rows.index(r), "columnIndex": columns.index(c)}
                                  for r, c in wells], "field_count": max(map(len, wells.values()), default=0)})
    return fields
