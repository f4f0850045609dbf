"""A screen's readout: the wells of an OME-Zarr high-content screening plate, each a row of counts and
medians over the nuclei of its fields, once ``dsb segment`` has segmented them field by field.

:func:`well_table` builds the table from the run's ``summary.csv`` rows and each field's
``NAME_nuclei.csv``; :func:`with_well_tables` writes ``PLATE_wells.csv`` beside them for each plate given.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from dsb.core.errors import BadDataError
from dsb.io.images import stack_shape
from dsb.io.ome import Well, is_plate, plate_name, plate_wells
from dsb.io.writers import write_table

__all__ = ["WELL_COLUMNS", "well_table", "with_well_tables"]

#: The columns every well table starts with (``t`` after ``column`` for fields that are time series);
#: ``median_COLUMN`` of each per-nucleus measurement follows.
WELL_COLUMNS = ("plate", "well", "row", "column", "fields", "segmented", "nuclei", "nuclei_per_field")
# The per-nucleus columns whose median over a well's nuclei is reported: size and intensity, the nucleus's
# (a stitched z-stack's 3-D nucleus's volume) and with cells the cell's and the cytoplasm's, of every channel.
_MEDIANS = re.compile(r"(area|integrated_intensity|(cell_|cytoplasm_)?mean_intensity|cell_area|cytoplasm_area|"
                      r"volume|max_area)(_.+)?")


def _measured(column: str) -> bool:
    return _MEDIANS.fullmatch(column) is not None or column == "t"


def well_table(wells: list[Well], summary: pd.DataFrame, plate: str = "") -> pd.DataFrame:
    """One row per well (per well and time point for time series): its fields, how many were segmented,
    its nuclei, and the median of each per-nucleus measurement over them.

    Parameters
    ----------
    wells : list of Well
        The plate's wells (:func:`dsb.io.ome.plate_wells`), in the order of the table.
    summary : pandas.DataFrame
        ``dsb segment``'s (or ``dsb measure``'s) summary: a row per field by its ``file`` (the field's
        path), its ``status``, ``measurements`` (the field's per-nucleus CSV) and, for a stitched z-stack,
        ``measurements_3d`` (its 3-D nuclei's), which is taken instead.
    plate : str
        The ``plate`` column.

    Returns
    -------
    pandas.DataFrame
        :data:`WELL_COLUMNS`: ``fields`` the well's metadata list, ``segmented`` those of status ok,
        ``nuclei`` over them and ``nuclei_per_field`` their mean, NaN where none was segmented (a failed
        well is no empty one); then ``median_area``, ``median_mean_intensity`` (``_NAME`` per channel),
        with a pixel size ``median_area_um2``, with cells ``median_cytoplasm_mean_intensity``... over all
        the well's nuclei, those the field's edge cuts too (NaN where there are none). Where a field's
        table has a ``t`` column (a time series), a row per well and time point, ``t`` after ``column``.

    Raises
    ------
    BadDataError
        A field's measurements that cannot be read, naming the file.
    """
    rows = {_key(file): row for file, row in zip(summary["file"], summary.to_dict("records"))}
    parts, done, segmented_fields = [], {}, []
    for well in wells:
        ok = [f for f in well.fields if rows.get(_key(f), {}).get("status") == "ok"]
        done[well.name] = len(ok)
        segmented_fields += ok
        for field in ok:
            parts.append(_read_measurements(rows[_key(field)]).assign(well=well.name))
    nuclei = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["well"])
    timed = "t" in nuclei.columns
    measured = [c for c in nuclei.columns if _MEDIANS.fullmatch(c)]
    keys = ["well", "t"] if timed else ["well"]
    counts = nuclei.groupby(keys).size()
    medians = nuclei.groupby(keys)[measured].median() if measured else pd.DataFrame()
    # Every time point the fields hold, those without a nucleus anywhere too (a lamp that failed).
    times = sorted(set(nuclei["t"].dropna().astype(int)) | set(range(_time_points(segmented_fields)))) if timed \
        else [None]
    out = []
    for well in wells:
        for t in times:
            key = well.name if t is None else (well.name, t)
            segmented = done[well.name]
            count = int(counts.get(key, 0)) if segmented else np.nan
            record = {"plate": plate, "well": well.name, "row": well.row, "column": well.column,
                      **({} if t is None else {"t": int(t)}), "fields": well.listed, "segmented": segmented,
                      "nuclei": count, "nuclei_per_field": count / segmented if segmented else np.nan}
            for column in measured:
                record[f"median_{column}"] = medians.at[key, column] if key in medians.index else np.nan
            out.append(record)
    head = [*WELL_COLUMNS[:4], *(["t"] if timed else []), *WELL_COLUMNS[4:]]
    return pd.DataFrame(out, columns=[*head, *(f"median_{c}" for c in measured)])


def _time_points(fields) -> int:
    """The most time points of any of ``fields``, from their headers (0 where none is a time series)."""
    most = 0
    for field in fields:
        try:
            shape, lead = stack_shape(field)
        except BadDataError:  # read when it was segmented: not to be told again
            continue
        most = max(most, shape[lead.index("t")] if "t" in lead else 0)
    return most


def _key(path) -> str:
    """A field's path as one string however it was spelled (``plate/A/1/0``, ``./plate/A/1/0/``)."""
    return os.path.abspath(path)


def _read_measurements(row: dict) -> pd.DataFrame:
    three_d = row.get("measurements_3d")
    path = Path(three_d if isinstance(three_d, str) and three_d else row["measurements"])
    try:
        return pd.read_csv(path, usecols=_measured)
    except OSError as exc:
        raise BadDataError(f"cannot read the field's measurements ({exc.strerror})", path=path) from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise BadDataError(f"cannot read the field's measurements ({exc})", path=path) from None


def with_well_tables(summary: pd.DataFrame, paths, out_dir) -> pd.DataFrame:
    """Write ``PLATE_wells.csv`` (:func:`well_table`) in ``out_dir`` for each OME-Zarr plate among ``paths``,
    from the fields ``summary`` lists; returns ``summary`` with the tables' paths by plate in its
    ``attrs["wells"]``. A plate whose metadata list no wells (skipped with the run's ``--skip-bad``, which
    named it) gets none."""
    written = {}
    for path in map(Path, paths):
        if not is_plate(path):
            continue
        try:
            wells, _ = plate_wells(path)
        except BadDataError:
            continue
        target = Path(out_dir) / f"{plate_name(path)}_wells.csv"
        write_table(target, well_table(wells, summary, plate_name(path)))
        written[str(path)] = str(target)
    summary.attrs["wells"] = written
    return summary
