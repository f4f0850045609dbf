"""Get the competition data into a folder, check it, and leave it alone once it is there.

:func:`fetch` fills ``DEST`` with::

    DEST/stage1_train/{ImageId}/images/{ImageId}.png   and   masks/*.png
    DEST/stage1_test/{ImageId}/images/{ImageId}.png
    DEST/*.csv                                         (stage1_train_labels.csv, ...)

from the Kaggle API, or from a local copy (``source``): the bundle Kaggle
serves (``data-science-bowl-2018.zip``, zips inside a zip), a folder of the
inner zips, or a folder where they are already unzipped.

Each stage is extracted into a temporary folder beside its destination,
verified (every image and mask readable, every mask the size of its image),
and renamed into place; a small marker ``DEST/.fetched-{stage}.json`` is
written after that, and ``DEST/.fetched.json`` last of all. An interrupted
fetch therefore never leaves a stage that looks complete, and a second fetch
of a complete destination returns at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from dsb.core.atomic import atomic_dir, atomic_path, os_error, scratch_dir, write_text
from dsb.core.errors import BadDataError, EnvironmentProblem
from dsb.core.progress import track
from dsb.io.images import IMAGE_SUFFIXES
from dsb.kaggle import kaggle_api

__all__ = ["REQUIRED_STAGES", "StageSummary", "FetchSummary", "fetch", "verify"]

REQUIRED_STAGES = ("stage1_train", "stage1_test")
_MARKER = ".fetched.json"
_SAFE_NAME = re.compile(r"^(?!\.{1,2}$)[^/\\\x00]+$")
_IGNORED = re.compile(r"(^|/)(__MACOSX|\.DS_Store|Thumbs\.db)(/|$)")


@dataclass(frozen=True)
class StageSummary:
    """One stage folder: how many images and mask files it holds."""

    name: str
    images: int
    masks: int

    def __str__(self) -> str:
        masks = f", {self.masks} masks" if self.masks else ""
        return f"{self.name}: {self.images} images{masks}"


@dataclass(frozen=True)
class FetchSummary:
    """What a destination holds after :func:`fetch` or :func:`verify`.

    Attributes
    ----------
    dest : Path
    stages : tuple of StageSummary
        Required stages first, then any other, by name.
    csvs : tuple of str
        CSV file names in ``dest``.
    fetched : tuple of str
        Stages and CSVs this call wrote (empty: everything was already there).
    seconds : float
    """

    dest: Path
    stages: tuple[StageSummary, ...]
    csvs: tuple[str, ...] = ()
    fetched: tuple[str, ...] = ()
    seconds: float = 0.0

    def stage(self, name: str) -> StageSummary:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def __str__(self) -> str:
        parts = [str(s) for s in self.stages]
        if self.csvs:
            parts.append(f"CSVs: {', '.join(self.csvs)}")
        note = "" if self.fetched else " (already there)"
        return "; ".join(parts) + f" in {self.dest}{note}"


# ---------------------------------------------------------------- sources


class _Item:
    """One thing to put into DEST: a stage folder or a CSV file."""

    def __init__(self, name: str, kind: str, label: str, opener):
        self.name, self.kind, self.label, self._opener = name, kind, label, opener

    def open(self, scratch: Path):
        """A context manager giving a ZipFile (stage or zipped CSV), a Path (folder or CSV)."""
        return self._opener(scratch)


def _zip_error(exc: BaseException, label) -> BadDataError:
    what = str(exc) or type(exc).__name__
    return BadDataError(f"corrupt or truncated zip ({what})", path=label)


@contextlib.contextmanager
def _open_zip(path: Path, label=None):
    label = label or path
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise BadDataError("zip file not found", path=label) from None
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as exc:
        raise _zip_error(exc, label) from None
    except OSError as exc:
        raise BadDataError(f"cannot read ({exc.strerror})", path=label) from None
    with zf:
        yield zf


def _classify(name: str) -> tuple[str, str] | None:
    """(item name, kind) for a file name in a source: a stage zip, a CSV, or a zipped CSV."""
    base = name.rsplit("/", 1)[-1]
    if base.startswith(".") or _IGNORED.search(name):
        return None
    lower = base.lower()
    if lower.endswith(".csv.zip"):
        return base[: -len(".zip")], "csvzip"
    if lower.endswith(".csv"):
        return base, "csv"
    if lower.endswith(".zip"):
        return base[: -len(".zip")], "stagezip"
    return None


def _items_from_zip(outer: Path) -> list[_Item]:
    """Items of Kaggle's bundle: inner zips (or stage folders and CSVs) inside one zip."""
    with _open_zip(outer) as zf:
        names = [i.filename for i in zf.infolist() if not i.is_dir()]
    items: dict[str, _Item] = {}
    stage_dirs: dict[str, str] = {}
    for name in names:
        c = _classify(name)
        if c is not None:
            items[c[0]] = _Item(c[0], c[1], f"{outer}:{name}", _member_opener(outer, name, c[1]))
        else:
            # a bundle that holds the stage folders themselves: stage/{id}/images/...
            m = re.match(r"^((?:[^/]+/)*?)([^/]+)/[^/]+/images/[^/]+$", name)
            if m and not _IGNORED.search(name):
                stage_dirs.setdefault(m.group(2), m.group(1) + m.group(2) + "/")
    for stage, prefix in stage_dirs.items():
        if stage not in items:
            items[stage] = _Item(stage, "stageprefix", f"{outer}:{prefix}", _outer_prefix_opener(outer, prefix))
    return list(items.values())


def _member_opener(outer: Path, member: str, kind: str):
    @contextlib.contextmanager
    def opener(scratch: Path):
        # Copy the inner file out first: a compressed member cannot be read at random.
        fd, tmp = tempfile.mkstemp(prefix=".inner.", suffix=Path(member).suffix, dir=scratch)
        os.close(fd)
        tmp = Path(tmp)
        try:
            with _open_zip(outer) as zf, zf.open(member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            tmp.unlink(missing_ok=True)
            raise _zip_error(exc, outer) from None
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise os_error(exc, scratch) from None
        try:
            if kind == "csv":
                yield tmp
            else:
                with _open_zip(tmp, label=f"{outer}:{member}") as inner:
                    yield inner
        finally:
            tmp.unlink(missing_ok=True)

    return opener


def _outer_prefix_opener(outer: Path, prefix: str):
    @contextlib.contextmanager
    def opener(scratch: Path):
        with _open_zip(outer) as zf:
            yield _Prefixed(zf, prefix)

    return opener


class _Prefixed:
    """A zip seen from one of its folders: the stage layout of a bundle that holds folders."""

    def __init__(self, zf: zipfile.ZipFile, prefix: str):
        self.zf, self.prefix, self.filename = zf, prefix, f"{zf.filename}:{prefix}"

    def infolist(self):
        return [i for i in self.zf.infolist() if i.filename.startswith(self.prefix)]

    def open(self, info):
        return self.zf.open(info)


def _items_from_folder(folder: Path) -> list[_Item]:
    items: dict[str, _Item] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if any((d / "images").is_dir() for d in _subdirs(entry)):
                items[entry.name] = _Item(entry.name, "stagedir", str(entry), _path_opener(entry))
            continue
        c = _classify(entry.name)
        if c is None:
            continue
        name, kind = c
        if kind == "csv":
            items[name] = _Item(name, "csv", str(entry), _path_opener(entry))
        elif name not in items or items[name].kind != "stagedir":  # an unzipped folder wins over its zip
            items[name] = _Item(name, kind, str(entry), _zip_opener(entry))
    return list(items.values())


def _subdirs(folder: Path):
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")]
    except OSError:
        return []


def _path_opener(path: Path):
    @contextlib.contextmanager
    def opener(scratch: Path):
        yield path

    return opener


def _zip_opener(path: Path):
    @contextlib.contextmanager
    def opener(scratch: Path):
        with _open_zip(path) as zf:
            yield zf

    return opener


def _source_items(source: Path) -> list[_Item]:
    if not source.exists():
        raise BadDataError("source not found (expected the competition zip, or a folder of its files)", path=source)
    if source.is_dir():
        items = _items_from_folder(source)
    else:
        items = _items_from_zip(source)
    stages = [i.name for i in items if i.kind.startswith("stage")]
    missing = [s for s in REQUIRED_STAGES if s not in stages]
    if missing:
        have = ", ".join(sorted(i.name for i in items)) or "nothing usable"
        raise BadDataError(
            f"holds no {missing[0]} (expected {missing[0]}.zip or a {missing[0]}/ folder; found {have})",
            path=source,
        )
    return items


# ---------------------------------------------------------------- extraction


def _stage_layout(members, label) -> list[tuple[object, str, str, str]]:
    """(info, ImageId, "images" or "masks", file name) of each zip member, checking the layout.

    Accepts one common leading folder (``stage1_train/{id}/...``) besides the bare layout.
    """
    parsed = []
    prefixes = set()
    for info in members:
        name = info.filename
        if info.is_dir() or _IGNORED.search(name) or any(p.startswith(".") for p in name.split("/")):
            continue  # folders, hidden files (a cache, an editor's) and macOS debris
        parts = name.split("/")
        if len(parts) < 3 or parts[-2] not in ("images", "masks"):
            raise BadDataError(
                f"unexpected entry {name!r} (expected {{ImageId}}/images/{{ImageId}}.png or {{ImageId}}/masks/*.png)",
                path=label,
            )
        image_id, sub, file = parts[-3], parts[-2], parts[-1]
        prefix = "/".join(parts[:-3])
        if not (_SAFE_NAME.match(image_id) and _SAFE_NAME.match(file)) or any(p in ("..", "") for p in parts[:-3]):
            raise BadDataError(f"unsafe entry name {name!r}", path=label)
        if Path(file).suffix.lower() not in IMAGE_SUFFIXES:
            raise BadDataError(f"unexpected entry {name!r} (expected .png files)", path=label)
        prefixes.add(prefix)
        parsed.append((info, image_id, sub, file))
    if len(prefixes) > 1:
        raise BadDataError(f"entries under several top folders ({', '.join(sorted(prefixes))[:200]})", path=label)
    images = {}
    for info, image_id, sub, file in parsed:
        if sub == "images":
            if Path(file).stem != image_id:
                raise BadDataError(
                    f"unexpected entry {info.filename!r} (the image of {image_id} must be named {image_id}.png)",
                    path=label,
                )
            if image_id in images:
                raise BadDataError(f"{image_id} has more than one image ({images[image_id]}, {file})", path=label)
            images[image_id] = file
    if not images:
        raise BadDataError(
            "holds no {ImageId}/images/{ImageId}.png (not a stage of the competition data)", path=label
        )
    orphans = sorted({image_id for _, image_id, sub, _ in parsed if sub == "masks"} - set(images))
    if orphans:
        raise BadDataError(f"masks of {orphans[0]} but no {orphans[0]}/images/{orphans[0]}.png", path=label)
    return parsed


def _extract_zip(zf, label, out: Path, *, progress: bool, stage: str) -> None:

    parsed = _stage_layout(zf.infolist(), label)
    made = set()
    try:
        for info, image_id, sub, file in track(parsed, label=f"unzip {stage}", enabled=progress):
            folder = out / image_id / sub
            if folder not in made:
                folder.mkdir(parents=True, exist_ok=True)
                made.add(folder)
            with zf.open(info) as src, open(folder / file, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise _zip_error(exc, label) from None
    except OSError as exc:
        raise os_error(exc, out.parent / stage) from None  # out is the stage's temporary folder


class _DirMember:
    """A file of an unzipped stage folder, shaped like a ZipInfo for :func:`_stage_layout`."""

    def __init__(self, path: Path, root: Path):
        self.path, self.filename = path, path.relative_to(root).as_posix()

    def is_dir(self) -> bool:
        return False


def _copy_dir(src: Path, out: Path, *, progress: bool, stage: str) -> None:

    members = [_DirMember(Path(dirpath) / f, src) for dirpath, _, files in os.walk(src) for f in files]
    parsed = _stage_layout(members, src)
    try:
        for member, image_id, sub, file in track(parsed, label=f"copy {stage}", enabled=progress):
            (out / image_id / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy2(member.path, out / image_id / sub / file)
    except OSError as exc:
        raise os_error(exc, out.parent / stage) from None  # out is the stage's temporary folder


# ---------------------------------------------------------------- verification


def _verify_stage(folder: Path, *, name: str, progress: bool = False, label=None) -> StageSummary:
    """Check every image decodes and every mask is readable and the size of its image."""
    from PIL import Image

    label = label or folder
    try:
        ids = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise BadDataError(f"cannot list ({exc.strerror})", path=folder) from None
    if not ids:
        raise BadDataError("holds no images", path=label)
    n_masks = 0
    for image_id in track(ids, label=f"verify {name}", enabled=progress):
        images_dir = folder / image_id / "images"
        files = sorted(p for p in images_dir.glob("*") if not p.name.startswith(".")) if images_dir.is_dir() else []
        image = [p for p in files if p.stem == image_id]
        if len(image) != 1:
            raise BadDataError(f"expected one image {image_id}.png, found {len(image)}", path=images_dir)
        try:
            with Image.open(image[0]) as im:
                im.load()  # decode fully: images are few
                size = im.size
        except Exception as exc:  # noqa: BLE001 - any failure means unreadable
            raise _bad_file(f"unreadable image ({_first_line(exc)})", image[0], folder, label) from None
        masks_dir = folder / image_id / "masks"
        if not masks_dir.is_dir():
            continue
        for mask in sorted(masks_dir.iterdir()):
            if mask.name.startswith("."):
                continue
            try:
                with Image.open(mask) as im:
                    msize = im.size
                    im.verify()  # every chunk's checksum, without decoding: masks are many
            except Exception as exc:  # noqa: BLE001
                raise _bad_file(f"unreadable mask ({_first_line(exc)})", mask, folder, label) from None
            if msize != size:
                raise _bad_file(
                    f"mask is {msize[1]}x{msize[0]} but its image is {size[1]}x{size[0]} (height x width)",
                    mask, folder, label,
                )
            n_masks += 1
    return StageSummary(name, len(ids), n_masks)


def _bad_file(message: str, file: Path, folder: Path, label) -> BadDataError:
    """A bad file of a stage being fetched, named as it is in the source (``label``).

    While fetching, ``folder`` is a temporary folder that is gone by the time the
    user reads the message: the source (zip or folder) and the member path are
    what they can look at.
    """
    if label is None or Path(label) == folder:
        return BadDataError(message, path=file)
    return BadDataError(message, path=label, where=file.relative_to(folder).as_posix())


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# ---------------------------------------------------------------- markers


def _stage_marker(dest: Path, stage: str) -> Path:
    return dest / f".fetched-{stage}.json"


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_stage_marker(dest: Path, summary: StageSummary, source) -> None:
    record = {"stage": summary.name, "images": summary.images, "masks": summary.masks, "source": str(source)}
    write_text(_stage_marker(dest, summary.name), json.dumps(record) + "\n")


def _write_marker(dest: Path, stages: list[str], csvs: list[str], source) -> None:
    """Written last: the whole destination is complete."""
    write_text(dest / _MARKER, json.dumps({"stages": stages, "csvs": csvs, "source": str(source)}, indent=1) + "\n")


def _stage_done(dest: Path, stage: str) -> StageSummary | None:
    """The recorded summary of a stage that a fetch completed and that still looks whole."""
    marker = _read_json(_stage_marker(dest, stage))
    folder = dest / stage
    if not marker or not folder.is_dir():
        return None
    try:
        n = sum(1 for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
        summary = StageSummary(stage, int(marker["images"]), int(marker["masks"]))
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return summary if n == summary.images else None


def _complete(dest: Path) -> FetchSummary | None:
    marker = _read_json(dest / _MARKER)
    if not marker:
        return None
    try:
        stages = [_stage_done(dest, s) for s in marker["stages"]]
        csvs = tuple(marker["csvs"])
    except (KeyError, TypeError):
        return None
    if any(s is None for s in stages) or not all((dest / c).is_file() for c in csvs):
        return None
    if not all(s in marker["stages"] for s in REQUIRED_STAGES):
        return None
    return FetchSummary(dest, tuple(stages), csvs)


def _order(names) -> list[str]:
    return [s for s in REQUIRED_STAGES if s in names] + sorted(n for n in names if n not in REQUIRED_STAGES)


# ---------------------------------------------------------------- public


def fetch(dest, *, source=None, client=None, progress: bool = False, force: bool = False) -> FetchSummary:
    """Put the competition data into ``dest``, verified; do nothing if it is already there.

    Parameters
    ----------
    dest : str or os.PathLike
        The data folder (created if needed).
    source : str or os.PathLike, optional
        A local copy: Kaggle's bundle zip, a folder of the inner zips (as
        ``stage1_train.zip``, ``stage1_test.zip``, ``*.csv.zip``), or a folder
        where they are unzipped. Without it the bundle is downloaded with the
        Kaggle API.
    client : optional
        The Kaggle API client (default: :func:`dsb.kaggle.kaggle_api.authenticate`);
        tests pass a fake.
    progress : bool
        Progress bars on stderr.
    force : bool
        Extract again even where a complete fetch is recorded.

    Returns
    -------
    FetchSummary
        ``str()`` of it is one line, e.g. "stage1_train: 664 images, 28986
        masks; stage1_test: 65 images; CSVs: ...".

    Raises
    ------
    EnvironmentProblem
        No source and no Kaggle credentials; a failed download; ``dest`` not writable.
    BadDataError
        A missing, corrupt or truncated zip; a layout that is not the
        competition's; an unreadable image or a mask of the wrong size.
    """
    start = time.perf_counter()
    dest = Path(dest)
    if not force:
        done = _complete(dest)
        if done is not None:
            return FetchSummary(done.dest, done.stages, done.csvs, (), time.perf_counter() - start)
    downloaded = None
    if source is None:
        source = downloaded = _download(dest, client=client, progress=progress)
    source = Path(source)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, dest) from None
    if source.resolve() == dest.resolve():
        return _adopt(dest, progress=progress, start=start)
    items = _source_items(source)

    fetched = []
    stages = {}
    with scratch_dir(dest, ".fetch-scratch.") as scratch:
        for item in items:
            if not item.kind.startswith("stage"):
                continue
            done = None if force else _stage_done(dest, item.name)
            if done is None:
                done = _fetch_stage(item, dest, scratch, progress=progress)
                fetched.append(item.name)
            stages[item.name] = done
        csvs = []
        for item in items:
            if item.kind.startswith("stage"):
                continue
            _fetch_csv(item, dest, scratch)
            csvs.append(item.name)
            fetched.append(item.name)
    order = _order(stages)
    _write_marker(dest, order, sorted(csvs), source)
    if downloaded is not None:
        shutil.rmtree(downloaded.parent, ignore_errors=True)  # extracted and verified: the bundle is spare
    seconds = time.perf_counter() - start
    return FetchSummary(dest, tuple(stages[s] for s in order), tuple(sorted(csvs)), tuple(fetched), seconds)


def _fetch_stage(item: _Item, dest: Path, scratch: Path, *, progress: bool) -> StageSummary:
    _stage_marker(dest, item.name).unlink(missing_ok=True)  # not complete until re-verified
    with item.open(scratch) as src, atomic_dir(dest / item.name) as tmp:
        if isinstance(src, Path):
            _copy_dir(src, tmp, progress=progress, stage=item.name)
        else:
            _extract_zip(src, item.label, tmp, progress=progress, stage=item.name)
        summary = _verify_stage(tmp, name=item.name, progress=progress, label=item.label)
    _write_stage_marker(dest, summary, item.label)
    return summary


def _fetch_csv(item: _Item, dest: Path, scratch: Path) -> None:
    with item.open(scratch) as src, atomic_path(dest / item.name) as tmp:
        if isinstance(src, Path):
            shutil.copyfile(src, tmp)
            return
        names = [i for i in src.infolist() if not i.is_dir() and not _IGNORED.search(i.filename)]
        if len(names) != 1 or not names[0].filename.lower().endswith(".csv"):
            raise BadDataError(
                f"expected one CSV inside, found {[i.filename for i in names][:5]}", path=item.label
            )
        try:
            with src.open(names[0]) as s, open(tmp, "wb") as d:
                shutil.copyfileobj(s, d, 1 << 20)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise _zip_error(exc, item.label) from None


def _adopt(dest: Path, *, progress: bool, start: float) -> FetchSummary:
    """``source`` is ``dest`` itself, already unzipped: verify it and record it as fetched."""
    summary = verify(dest, progress=progress)
    for stage in summary.stages:
        _write_stage_marker(dest, stage, dest)
    _write_marker(dest, [s.name for s in summary.stages], list(summary.csvs), dest)
    return FetchSummary(dest, summary.stages, summary.csvs, (), time.perf_counter() - start)


def _download(dest: Path, *, client, progress: bool) -> Path:
    """Download Kaggle's bundle into ``dest/.download`` (kept until extraction succeeds)."""

    done = dest / ".download" / f"{kaggle_api.COMPETITION}.zip"
    if done.is_file():
        return done  # a previous fetch downloaded it but did not finish extracting
    try:
        if client is None:
            client = kaggle_api.authenticate()
        with atomic_dir(done.parent) as tmp:
            got = kaggle_api.download_competition(tmp, client=client, quiet=not progress)
            if got.name != done.name:
                got.rename(tmp / done.name)
    except EnvironmentProblem as exc:
        # Only fetch has a way round Kaggle: a local copy of the files.
        raise EnvironmentProblem(f"{exc.message}, or pass --source DIR", path=exc.path, where=exc.where) from None
    return done


def verify(dest, *, progress: bool = False) -> FetchSummary:
    """Check a data folder again: layout, every file readable, every mask its image's size.

    Where a fetch recorded counts, they must still match.

    Parameters
    ----------
    dest : str or os.PathLike

    Returns
    -------
    FetchSummary

    Raises
    ------
    BadDataError
        A required stage is missing, a count changed, or a file is unreadable.
    """
    start = time.perf_counter()
    dest = Path(dest)
    if not dest.is_dir():
        raise BadDataError("folder not found", path=dest)
    names = [
        e.name for e in sorted(dest.iterdir())
        if e.is_dir() and not e.name.startswith(".") and any((d / "images").is_dir() for d in _subdirs(e))
    ]
    missing = [s for s in REQUIRED_STAGES if s not in names]
    if missing:
        raise BadDataError(f"no {missing[0]}/ folder (run `dsb fetch --dest {dest}`)", path=dest)
    stages = []
    for name in _order(names):
        summary = _verify_stage(dest / name, name=name, progress=progress)
        marker = _read_json(_stage_marker(dest, name))
        if marker and (marker.get("images"), marker.get("masks")) != (summary.images, summary.masks):
            raise BadDataError(
                f"holds {summary.images} images and {summary.masks} masks, but the fetch left "
                f"{marker.get('images')} and {marker.get('masks')}",
                path=dest / name,
            )
        stages.append(summary)
    csvs = tuple(sorted(p.name for p in dest.glob("*.csv")))
    return FetchSummary(dest, tuple(stages), csvs, (), time.perf_counter() - start)
