"""A z-stack's nuclei in 3-D: ``dsb segment --stitch``.

``dsb segment`` finds the nuclei of a stack plane by plane (:func:`dsb.workflows.segment_files.segment_stack`);
in a z-stack each nucleus is then found once in every plane it crosses, so a count of the planes'
nuclei counts each nucleus many times. With ``--stitch`` the planes' nuclei are joined through z
(:func:`dsb.core.stitch.stitch_planes`): each 3-D nucleus keeps one label in every plane, and
:func:`measure_volumes` turns the planes' measurements into one row per 3-D nucleus.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dsb.core.stitch import MIN_OVERLAP, stitch_planes
from dsb.io.channels import FRAME_COLUMNS
from dsb.io.pixel_size import read_z_step

__all__ = ["NO_PLANES", "NO_PLANES_FOR", "VOLUME_COLUMNS", "SECTION_NAMES", "Stitch", "beside_sections",
           "disjoint_sections", "measure_volumes", "relabel_sections", "section_lookup", "stack_volumes", "stitch_axis",
           "stitch_sections",
           "stitch_stack", "volume_notes", "with_volumes"]

VOLUME_COLUMNS = (
    "label",
    "z_first",
    "z_last",
    "centroid_z",
    "centroid_row",
    "centroid_col",
    "touches_edge",
    "volume",
    "max_area",
    "mean_intensity",
    "integrated_intensity",
    "confidence",
)


#: The columns of :func:`measure_volumes` that a section's measurements have too
#: (:func:`dsb.workflows.segment_files.measure_nuclei`), and each channel's mean (``mean_intensity_NAME``):
#: beside a section's, a 3-D nucleus's are named ``NAME_3d`` (:func:`beside_sections`).
SECTION_NAMES = ("centroid_row", "centroid_col", "touches_edge", "mean_intensity", "integrated_intensity", "confidence",
                 "equivalent_diameter_um")

# The warning of a time series given to --stitch (or dsb measure's --volumes): it has no planes to join.
NO_PLANES_FOR = "a time series with no z planes: {} left its frames apart"
NO_PLANES = NO_PLANES_FOR.format("--stitch")


@dataclass(frozen=True)
class Stitch:
    """How ``dsb segment --stitch`` joins a z-stack's planes.

    Attributes
    ----------
    min_overlap : float
        As for :func:`dsb.core.stitch.stitch_planes`.
    z_step : float or None
        The distance between planes in micrometres, instead of the file's metadata
        (:func:`dsb.io.pixel_size.read_z_step`); with a pixel size it gives each nucleus's volume in
        cubic micrometres.
    """

    min_overlap: float = MIN_OVERLAP
    z_step: float | None = None

    def __post_init__(self):
        # Said before a stack is segmented, not after.
        if not 0 < self.min_overlap <= 1:
            raise ValueError(f"the stitching overlap must be in (0, 1], got {self.min_overlap}")
        if self.z_step is not None and not (np.isfinite(self.z_step) and self.z_step > 0):
            raise ValueError(f"the z step must be a positive number of micrometres, got {self.z_step}")


def stitch_axis(roles: str) -> int | None:
    """Which frame axis of a stack of ``roles`` (:func:`dsb.io.images.read_stack`) holds its planes: the
    ``z`` axis, or the one axis of a stack that names none; None for a time series.

    >>> stitch_axis("tz"), stitch_axis("f"), stitch_axis("t")
    (1, 0, None)
    """
    if "z" in roles:
        return roles.index("z")
    return 0 if roles == "f" else None


def stitch_stack(labels: np.ndarray, axis: int, min_overlap: float = MIN_OVERLAP) -> np.ndarray:
    """``labels`` (frames first, then rows and columns) with each 3-D nucleus given one label through the
    planes along frame axis ``axis``, numbered from 1 at each index of the other frame axes (each time
    point of a hyperstack): :func:`dsb.core.stitch.stitch_planes`."""
    planes = np.moveaxis(labels, axis, -3)
    if planes.ndim == 3:  # a z-stack alone
        return stitch_planes(planes, min_overlap)
    out = np.empty(planes.shape, np.int32)
    for index in np.ndindex(*planes.shape[:-3]):
        out[index] = stitch_planes(planes[index], min_overlap)
    return np.moveaxis(out, -3, axis)


def section_lookup(own: np.ndarray, stitched: np.ndarray) -> np.ndarray:
    """The 3-D label of each of a plane's own labels: ``lookup[own] == stitched`` over the plane, so that
    what was measured or known of its nuclei by their own labels (a table's ``label``, their confidences)
    is given their 3-D nucleus's. Labels the plane does not hold map to 0.

    >>> section_lookup(np.array([[0, 1, 2]]), np.array([[0, 7, 3]])).tolist()
    [0, 7, 3]
    """
    lookup = np.zeros(int(own.max(initial=0)) + 1, np.int64)
    lookup[own.ravel()] = stitched.ravel()
    return lookup


def relabel_sections(frames: np.ndarray, own: np.ndarray, stitched: np.ndarray) -> np.ndarray:
    """``frames`` (a stack labelled frame by frame as ``own`` is: each frame's cells) given the 3-D labels that
    ``stitched`` gives ``own``'s sections (:func:`section_lookup` of each frame), in ``stitched``'s type.

    >>> relabel_sections(np.array([[[1, 1, 2]]]), np.array([[[1, 0, 2]]]), np.array([[[5, 0, 3]]])).tolist()
    [[[5, 5, 3]]]
    """
    out = np.empty(stitched.shape, stitched.dtype)
    for index in np.ndindex(*own.shape[:-2]):
        out[index] = section_lookup(own[index], stitched[index])[frames[index]]
    return out


def stitch_sections(labels: np.ndarray, tables: dict, axis: int, min_overlap: float = MIN_OVERLAP) -> np.ndarray:
    """:func:`stitch_stack` of a stack whose frames were measured: each frame's table (by frame index, its
    ``label`` the frame's own numbering, as :func:`dsb.workflows.segment_files.measure_nuclei` gives it) replaced
    by one whose ``label`` holds its nuclei's 3-D labels, its rows in their order (as ``dsb measure`` gives a
    stitched stack's); the stitched labels are returned (int32)."""
    stitched = stitch_stack(labels, axis, min_overlap)
    for index, table in tables.items():
        table = table.assign(label=section_lookup(labels[index], stitched[index])[table["label"].to_numpy(np.int64)])
        tables[index] = table.sort_values("label", kind="stable", ignore_index=True)
    return stitched


def measure_volumes(table: pd.DataFrame, *, z: str, planes: int, pixel_size: float | None = None,
                    z_step: float | None = None) -> pd.DataFrame:
    """One row per 3-D nucleus from the measurements of its sections.

    Parameters
    ----------
    table : DataFrame
        :func:`dsb.workflows.segment_files.measure_nuclei`'s rows of every plane, with the frame axes'
        columns (``t``, ``z``, ``frame``) before them and ``label`` the 3-D nucleus's
        (:func:`stitch_stack`).
    z : str
        The column of the plane's index.
    planes : int
        The stack's number of planes: a nucleus in its first or last plane goes on beyond it.
    pixel_size, z_step : float, optional
        Micrometres a pixel and between planes.

    Returns
    -------
    DataFrame
        By the other frame axes' columns (a hyperstack's ``t``), then label: the columns of
        :data:`VOLUME_COLUMNS`: ``label``; ``z_first`` and ``z_last`` (the planes it spans, from 0:
        stitched plane to plane, it is in every one between); ``centroid_z``, ``centroid_row``,
        ``centroid_col`` (planes and pixels); ``touches_edge`` (the image's edge cuts it in some plane,
        or it lies in the first or last plane); ``volume`` (voxels: its pixels in all planes);
        ``max_area`` (its largest section, pixels); ``mean_intensity`` and ``integrated_intensity``
        over its voxels' finite values (NaN where it has none); ``confidence`` (its sections' mean,
        by area) where the planes have it; each channel's mean (``mean_intensity_NAME``) where they
        have them; with ``pixel_size``, ``max_area_um2``, and with ``z_step`` too, ``volume_um3``,
        ``equivalent_diameter_um`` (the diameter of a ball of its volume) and ``centroid_z_um``.

    Examples
    --------
    >>> sections = pd.DataFrame({"z": [0, 1, 1], "label": [1, 1, 2], "centroid_row": [2.0, 4.0, 9.0],
    ...     "centroid_col": [3.0, 3.0, 9.0], "touches_edge": [False] * 3, "area": [10, 30, 5],
    ...     "mean_intensity": [2.0, 4.0, 1.0], "integrated_intensity": [20.0, 120.0, 5.0]})
    >>> volumes = measure_volumes(sections, z="z", planes=3)
    >>> volumes[["label", "z_last", "volume", "centroid_z", "centroid_row", "mean_intensity"]].values.tolist()
    [[1.0, 1.0, 40.0, 0.75, 3.5, 3.5], [2.0, 1.0, 5.0, 1.0, 9.0, 1.0]]
    """
    keys = [c for c in table.columns[: table.columns.get_loc("label")] if c != z] + ["label"]
    area = table["area"].astype(float)
    # Each section's finite pixels (a float image's NaN left out), which its mean was taken over.
    mean = table["mean_intensity"]
    finite = (table["integrated_intensity"] / mean).where(mean != 0, area).fillna(0.0)
    channels = [c for c in table.columns if c.startswith("mean_intensity_")]
    by_area = [c for c in ("centroid_row", "centroid_col", "confidence") if c in table.columns]
    work = table[keys].assign(
        z_first=table[z], z_last=table[z], centroid_z=table[z] * area, touches_edge=table["touches_edge"],
        volume=table["area"], max_area=table["area"], integrated_intensity=table["integrated_intensity"],
        _finite=finite, **{c: table[c] * area for c in by_area},
        # A channel's mean, by the area of the sections that have one.
        **{c: (table[c] * area).fillna(0.0) for c in channels},
        **{f"_{c}": area.where(table[c].notna(), 0.0) for c in channels})
    sums = {c: (c, "sum") for c in ["centroid_z", "volume", "integrated_intensity", "_finite", *by_area, *channels,
                                    *(f"_{c}" for c in channels)]}
    out = work.groupby(keys, sort=True).agg(z_first=("z_first", "min"), z_last=("z_last", "max"),
                                            touches_edge=("touches_edge", "any"), max_area=("max_area", "max"),
                                            **sums).reset_index()
    volume = out["volume"].astype(float)
    for column in ("centroid_z", *by_area):
        out[column] = out[column] / volume
    for column in channels:
        out[column] = out[column] / out[f"_{column}"].where(out[f"_{column}"] > 0)
    counted = out["_finite"].where(out["_finite"] > 0)
    out["integrated_intensity"] = out["integrated_intensity"].where(counted.notna())
    out["mean_intensity"] = out["integrated_intensity"] / counted
    out["touches_edge"] = out["touches_edge"] | (out["z_first"] == 0) | (out["z_last"] == planes - 1)
    out = out[[c for c in keys if c != "label"] + [c for c in VOLUME_COLUMNS if c in out.columns] + channels]
    if pixel_size is not None:
        out = out.assign(max_area_um2=out["max_area"] * pixel_size ** 2)
        if z_step is not None:
            cubic = out["volume"] * pixel_size ** 2 * z_step
            out = out.assign(volume_um3=cubic, equivalent_diameter_um=np.cbrt(6.0 * cubic / np.pi),
                             centroid_z_um=out["centroid_z"] * z_step)
    return out


def stack_volumes(sections: pd.DataFrame, roles: str, axis: int, planes: int, *, pixel_size: float | None = None,
                  z_step: float | None = None, path=None) -> tuple[pd.DataFrame, float | None, list[str]]:
    """A stack file's 3-D nuclei from its sections' measurements (frame columns first, labelled by 3-D
    nucleus), its planes on frame axis ``axis`` of ``roles``: :func:`measure_volumes` at ``z_step``, else
    the file's (:func:`dsb.io.pixel_size.read_z_step` of ``path``); the volumes, the z step taken, and
    :func:`volume_notes`. Shared by ``dsb segment --stitch`` and ``dsb measure --volumes``."""
    step = z_step if z_step is not None or path is None else read_z_step(path)
    volumes = measure_volumes(sections, z=FRAME_COLUMNS[roles[axis]], planes=planes, pixel_size=pixel_size,
                              z_step=step)
    return volumes, step, volume_notes(roles, step, pixel_size)


def beside_sections(volumes: pd.DataFrame) -> pd.DataFrame:
    """:func:`measure_volumes`' table with the columns a section's measurements have too (:data:`SECTION_NAMES`,
    the channels' means) named ``NAME_3d``, to stand beside a section's row without taking its names.

    >>> beside_sections(pd.DataFrame(columns=["label", "volume", "confidence", "mean_intensity_DAPI"])).columns.tolist()
    ['label', 'volume', 'confidence_3d', 'mean_intensity_DAPI_3d']
    """
    return volumes.rename(columns=lambda c: f"{c}_3d" if c in SECTION_NAMES or c.startswith("mean_intensity_") else c)


def with_volumes(sections: pd.DataFrame, volumes: pd.DataFrame) -> pd.DataFrame:
    """Each section's row of ``sections`` (in its order) with its 3-D nucleus's columns of ``volumes`` after
    them (:func:`beside_sections`), matched by label and by the other frame axes' columns (a hyperstack's
    ``t``): what a section drawn alone (a QuPath detection) carries of its nucleus."""
    keys = list(volumes.columns[: volumes.columns.get_loc("label") + 1])
    return sections.merge(beside_sections(volumes), on=keys, how="left", validate="many_to_one")


def volume_notes(roles: str, z_step: float | None, pixel_size: float | None) -> list[str]:
    """What a stack's ``summary.csv`` warning says of its 3-D nuclei: plain pages taken as planes, and a z step
    that gives no cubic micrometres for want of a pixel size."""
    notes = []
    if roles == "f":
        notes.append("its pages were taken as the planes of a z-stack")
    if z_step is not None and pixel_size is None:
        notes.append("a z step without a pixel size (--pixel-size) gives no volume in cubic micrometres")
    return notes


def disjoint_sections(labels: np.ndarray, axis: int) -> int:
    """How many 3-D nuclei of ``labels`` (frames first, planes on frame axis ``axis``) have sections in
    neighbouring planes that do not overlap: none in labels of 3-D nuclei, many in a stack numbered plane
    by plane (each plane's nucleus 1 another nucleus).

    >>> planes = np.zeros((2, 1, 4), int); planes[0, 0, :2] = 1; planes[1, 0, 2:] = 1
    >>> disjoint_sections(planes, 0), disjoint_sections(np.ones((2, 1, 4), int), 0)
    (1, 0)
    """
    planes = np.moveaxis(labels, axis, -3)
    planes = planes.reshape(-1, *planes.shape[-3:])  # each time point's planes
    found = set()
    for point, stack in enumerate(planes):
        for lower, upper in zip(stack[:-1], stack[1:]):
            both = np.intersect1d(lower[lower > 0], upper[upper > 0])
            touching = np.unique(lower[(lower == upper) & (lower > 0)])
            found.update((point, int(k)) for k in np.setdiff1d(both, touching))
    return len(found)
