"""The folder pipeline of ``dsb predict``, ``dsb segment`` and ``dsb evaluate``: find, read, predict, write.

Each command runs the same four steps:

1. find the images: :func:`folder_images` (a stage folder or a flat folder,
   as ``dsb predict`` takes) or :func:`find_images` (image files and folders
   of them, as ``dsb segment`` takes); both give ``{id: path}`` and the
   entries that are not usable images;
2. read and check each image once, before anything is written
   (:func:`read_images`); decoded images are kept for step 3 up to
   :data:`CACHE_BYTES`, beyond which they are read again there;
3. predict each image's nuclei (:func:`predict_each` over
   :func:`nuclei_predictor`, i.e. :func:`dsb.predict.predict_nuclei`);
4. write what the command writes: label images (:func:`write_labels`, the
   one label writer), RGB pictures (:func:`write_png`).

A bad image is the :class:`Skips` policy's: by default it stops the run,
with ``skip_bad`` it becomes a :class:`Skip` record that the command returns
and the command line prints. Nothing here prints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .dataset import IMAGE_SUFFIXES, image_path, read_image
from .errors import BadDataError, DsbError
from .progress import track

__all__ = [
    "CACHE_BYTES",
    "Skip",
    "Skips",
    "folder_images",
    "find_images",
    "Checked",
    "read_images",
    "nuclei_predictor",
    "predict_each",
    "write_labels",
    "write_png",
]

# Decoded images kept from the checking pass for the prediction pass, in bytes
# (the 65 stage-1 test images take 37 MB; beyond this they are read again).
CACHE_BYTES = 256 << 20
_UINT16_MAX = np.iinfo(np.uint16).max


# ---------------------------------------------------------------- skip policy


@dataclass(frozen=True)
class Skip:
    """An input left out of a run, and why.

    ``str(skip)`` is the one line the command line prints after "skipped: ",
    in the form of :class:`dsb.errors.DsbError`: ``path: where: message``.
    """

    path: str | None
    message: str
    where: str | None = None

    @classmethod
    def from_error(cls, exc: DsbError) -> Skip:
        return cls(exc.path, exc.message, exc.where)

    def __str__(self) -> str:
        return str(DsbError(self.message, path=self.path, where=self.where))


class Skips:
    """What to do with a bad input: raise it (the default), or record it and go on.

    Parameters
    ----------
    skip_bad : bool
        Record each problem as a :class:`Skip` in :attr:`records` instead of
        raising it.
    """

    def __init__(self, skip_bad: bool = False):
        self.skip_bad = skip_bad
        self.records: list[Skip] = []

    def __call__(self, exc: DsbError, *, path=None) -> None:
        """Raise ``exc`` (named after ``path`` when it names no file), or record it with ``skip_bad``."""
        if exc.path is None and path is not None:
            exc = type(exc)(exc.message, path=path, where=exc.where)
        if not self.skip_bad:
            raise exc
        self.records.append(Skip.from_error(exc))


# ---------------------------------------------------------------- 1. finding


def folder_images(images_dir) -> tuple[dict[str, Path], list[BadDataError]]:
    """The images of a folder in stage layout or a flat folder, by id.

    A stage folder holds ``{id}/images/{id}.png`` (as Kaggle's stage zips
    unpack; another image suffix is accepted, see
    :func:`dsb.dataset.image_path`); a flat folder holds image files
    directly, the id being the file name without its suffix. Hidden files and
    folders are ignored.

    Parameters
    ----------
    images_dir : str or os.PathLike

    Returns
    -------
    images : dict of str to Path
        Id to image file, sorted by id.
    problems : list of BadDataError
        Entries that are not usable images (a file with another suffix, a sample
        folder without its image, two files with one id), each naming the path.

    Raises
    ------
    BadDataError
        When ``images_dir`` is not a folder or holds no image at all.
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise BadDataError("not a folder of images", path=root)
    try:
        entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise BadDataError(f"cannot list the folder ({exc.strerror})", path=root) from None
    images: dict[str, Path] = {}
    problems: list[BadDataError] = []
    folders = [p for p in entries if p.is_dir()]
    if any((p / "images").is_dir() for p in folders):
        for folder in folders:
            path = image_path(root, folder.name)
            if path.is_file():
                images[folder.name] = path
            else:
                problems.append(BadDataError(f"expected the sample's image at images/{folder.name}.png", path=folder))
    else:
        for path in entries:
            if not path.is_file():
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                problems.append(
                    BadDataError(f"not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})", path=path)
                )
            elif not _usable_id(path.stem):
                problems.append(
                    BadDataError("the file name cannot be a submission ImageId (comma, quote or edge spaces)", path=path)
                )
            elif path.stem in images:
                problems.append(BadDataError(f"has the same id {path.stem!r} as {images[path.stem].name}", path=path))
            else:
                images[path.stem] = path
    if not images and not problems:
        raise BadDataError(
            "holds no images (expected {id}/images/{id}.png folders or PNG, TIFF, JPEG or BMP files)", path=root
        )
    return dict(sorted(images.items())), problems


def _usable_id(image_id: str) -> bool:
    return image_id.strip() == image_id and image_id.isprintable() and not any(c in image_id for c in ',"')


def find_images(paths) -> tuple[dict[str, Path], list[BadDataError]]:
    """Expand image files and folders into the images to segment, by name.

    A folder contributes the image files (PNG, TIFF, JPEG, BMP: the suffixes
    of :data:`dsb.dataset.IMAGE_SUFFIXES`) directly inside it, not those of its
    subfolders; hidden files and other suffixes are left alone. A file named
    explicitly must have one of those suffixes.

    Parameters
    ----------
    paths : iterable of str or os.PathLike
        Image files and folders of images.

    Returns
    -------
    images : dict of str to Path
        File name without suffix to file, in the order given (each folder
        sorted by name); a file reached twice counts once.
    problems : list of BadDataError
        Paths that cannot be segmented, each naming the path: missing, a file
        with another suffix, a folder with no images.

    Raises
    ------
    BadDataError
        For two different files with one name (their outputs would collide).
    """
    images: dict[str, Path] = {}
    problems: list[BadDataError] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key in seen:
            return
        seen.add(key)
        other = images.setdefault(path.stem, path)
        if other != path:
            raise BadDataError(
                f"would write the same output files as {other} (same name {path.stem!r}); rename one of them",
                path=path,
            )

    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                problems.append(BadDataError(
                    f"folder holds no images (expected files ending {', '.join(IMAGE_SUFFIXES)})", path=path))
            for p in found:
                add(p)
        elif path.is_file():
            if path.suffix.lower() in IMAGE_SUFFIXES:
                add(path)
            else:
                problems.append(BadDataError(
                    f"suffix {path.suffix or '(none)'!r} is not one of {', '.join(IMAGE_SUFFIXES)}", path=path))
        else:
            problems.append(BadDataError("no such file or folder", path=path))
    return images, problems


# ---------------------------------------------------------------- 2. reading


def _read_or_problem(path: Path) -> tuple[np.ndarray | None, DsbError | None]:
    try:
        return read_image(path), None  # checks the layout: (H, W) or (H, W, 1..4), at least one pixel
    except DsbError as exc:
        return None, exc


def _read_ahead(paths: Iterable[Path]) -> Iterator[tuple[np.ndarray | None, DsbError | None]]:
    """``(raw image, None)`` or ``(None, problem)`` for each path, in order, decoded on every core:
    Pillow decodes outside the GIL (the 65 stage-1 test images: 0.14 s on 2 cores, 0.26 s on one).
    At most two images per core are decoded ahead of the reader."""
    from concurrent.futures import ThreadPoolExecutor

    from .engines import usable_cores

    cores = usable_cores()
    if cores == 1:
        yield from map(_read_or_problem, paths)
        return
    with ThreadPoolExecutor(max_workers=cores, thread_name_prefix="dsb-read") as pool, \
            contextlib.closing(_in_order(pool, _read_or_problem, paths, 2 * cores)) as done:
        for _, future in done:
            yield future.result()


def _in_order(pool, work: Callable, items: Iterable, ahead: int, argument: Callable = lambda item: item):
    """``(item, future of work(argument(item)))`` for each item, in order, with at most ``ahead``
    submitted to ``pool`` and not yet handed out; closing the generator (an error, or a caller that
    stops early) cancels those not started."""
    from collections import deque

    pending: deque = deque()
    try:
        for item in items:
            if len(pending) == ahead:
                yield pending.popleft()
            pending.append((item, pool.submit(work, argument(item))))
        while pending:
            yield pending.popleft()
    finally:
        for _, future in pending:
            future.cancel()


class Checked:
    """The images that read and passed the check, by id, with the decoded ones kept.

    Iterate with :meth:`images` to get each image once more for prediction.
    """

    def __init__(self, paths: dict[str, Path], cache: dict[str, np.ndarray]):
        self.paths = paths
        self._cache = cache

    def __len__(self) -> int:
        return len(self.paths)

    def images(self, skips: Skips) -> Iterator[tuple[str, Path, np.ndarray]]:
        """``(id, path, raw image)`` of each image: kept ones handed over, others read again."""
        for image_id, path in self.paths.items():
            if image_id in self._cache:
                yield image_id, path, self._cache.pop(image_id)
                continue
            try:
                raw = read_image(path)
            except DsbError as exc:
                skips(exc, path=path)
                continue
            yield image_id, path, raw


def read_images(
    images: Mapping[str, Path],
    skips: Skips,
    *,
    progress: bool = False,
    label: str = "checking",
    cache_bytes: int = CACHE_BYTES,
) -> Checked:
    """Read and check every image before any is predicted, so that a bad one stops the run early.

    Parameters
    ----------
    images : mapping of str to Path
        From :func:`folder_images` or :func:`find_images`.
    skips : Skips
        Gets each image that cannot be read or taken by the network
        (:func:`dsb.dataset.read_image`: unreadable, not an image, a stack).
    progress : bool
        Draw a progress bar on stderr.
    label : str
        The progress bar's label.
    cache_bytes : int
        Decoded images are kept for prediction up to this many bytes.

    Returns
    -------
    Checked
    """
    good: dict[str, Path] = {}
    cache: dict[str, np.ndarray] = {}
    kept = 0
    with contextlib.closing(_read_ahead(images.values())) as read:  # a bad image stops the reads ahead
        for (image_id, path), (raw, problem) in track(zip(images.items(), read), length=len(images),
                                                      label=label, enabled=progress):
            if problem is not None:
                skips(problem, path=path)
                continue
            good[image_id] = path
            if kept + raw.nbytes <= cache_bytes:
                cache[image_id] = raw
                kept += raw.nbytes
    return Checked(good, cache)


# ---------------------------------------------------------------- 3. predicting


class NucleiPredictor:
    """A function from a raw image to its :class:`dsb.predict.Nuclei` (:func:`dsb.predict.predict_nuclei`),
    in two stages (network, then watershed) that :func:`predict_each` overlaps."""

    def __init__(self, model, config, *, tta: bool = False, diameter: float | None = None):
        self.model, self.config, self.tta, self.diameter = model, config, tta, diameter

    def network(self, raw):
        from .predict import network_stage

        return network_stage(self.model, self.config, raw, tta=self.tta, diameter=self.diameter)

    def watershed(self, stage):
        from .predict import watershed_stage

        return watershed_stage(stage, self.config)

    def __call__(self, raw):
        return self.watershed(self.network(raw))

    def streams(self) -> list[NucleiPredictor]:
        """One predictor per stream of the network (:meth:`dsb.engines.Network.streams`), to run at
        the same time on as many threads; ``[self]`` for a network that takes one call at a time.
        Each is made as ``type(self)(stream, config, tta=..., diameter=...)``: a subclass keeps
        that signature."""
        streams = self.model.streams() if callable(getattr(self.model, "streams", None)) else [self.model]
        if len(streams) < 2:
            return [self]
        return [type(self)(stream, self.config, tta=self.tta, diameter=self.diameter) for stream in streams]


def nuclei_predictor(model, config, *, tta: bool = False, diameter: float | None = None) -> NucleiPredictor:
    """A function from a raw image to its :class:`dsb.predict.Nuclei` (:func:`dsb.predict.predict_nuclei`)."""
    return NucleiPredictor(model, config, tta=tta, diameter=diameter)


def predict_each(
    predict: Callable,
    images: Iterable[tuple[str, Path | None, np.ndarray]],
    *,
    skips: Skips | None = None,
    progress: bool = False,
    length: int | None = None,
    label: str = "predicting",
) -> Iterator[tuple[str, Path | None, np.ndarray, object]]:
    """Predict the nuclei of each image, in order.

    A :func:`nuclei_predictor` whose network runs as several streams
    (:meth:`dsb.engines.Network.streams`: OpenVINO and ONNX Runtime on two
    cores or more) takes that many images at a time, one per thread, unless
    ``length`` says there is one image (then it takes the whole network);
    otherwise one image at a time, its watershed beside the network of the
    next. The nuclei are the same either way. A caller that may stop early
    closes the iterator (``contextlib.closing``) to stop the images in flight.

    Parameters
    ----------
    predict : callable
        Raw image to :class:`dsb.predict.Nuclei` (:func:`nuclei_predictor`).
    images : iterable of (str, Path or None, ndarray)
        ``(id, path, raw image)``: :meth:`Checked.images`, or images in memory
        with no path.
    skips : Skips, optional
        Gets an image the network cannot take (BadDataError, named after its
        path); None raises it.
    progress, length, label
        The progress bar on stderr.

    Yields
    ------
    (str, Path or None, ndarray, Nuclei)
        Id, path, raw image and its nuclei.
    """
    streams = predict.streams() if isinstance(predict, NucleiPredictor) and length != 1 else [predict]
    if len(streams) > 1:
        # The bar counts finished images (skipped ones too), not those handed to a stream.
        done = _in_streams(streams, images, skips)
        for row in track(done, length=length, label=label, enabled=progress):
            if row[-1] is not None:
                yield row
        return
    items = track(images, length=length, label=label, enabled=progress)
    if not isinstance(predict, NucleiPredictor):
        for image_id, path, raw in items:
            nuclei = _attempt(predict, raw, path, skips)
            if nuclei is not None:
                yield image_id, path, raw, nuclei
        return
    # One stream (Keras, one core, one image): the watershed of one image (numpy and scipy, one
    # core) runs while the network works on the next one (the engine's own threads). Measured
    # before streams, on 2 cores with OpenVINO: 18.6 s end to end instead of 20.2 s.
    from concurrent.futures import ThreadPoolExecutor

    def finished(pending):
        """The previous image with its nuclei, once its watershed is done; empty when it was skipped."""
        if pending is not None:
            image_id, path, raw, future = pending
            nuclei = _attempt(lambda f: f.result(), future, path, skips)
            if nuclei is not None:
                yield image_id, path, raw, nuclei

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsb-watershed") as pool:
        pending = None
        for image_id, path, raw in items:
            stage = _attempt(predict.network, raw, path, skips)
            yield from finished(pending)
            pending = None if stage is None else (image_id, path, raw, pool.submit(predict.watershed, stage))
        yield from finished(pending)


def _in_streams(streams: list[NucleiPredictor], items, skips):
    """:func:`predict_each` with one image per stream at a time, each on its own thread, in order;
    a skipped image comes out with None for its nuclei.

    A stream is one thread's share of the engine (:meth:`dsb.engines.Network.streams`): while one
    image is in the watershed, the network of the others goes on, with no core waiting for it.
    Measured with ``make bench`` on 2 cores (AVX2), OpenVINO, the three-pass scale estimate:
    0.79 MP/s end to end over the 65 stage-1 test images, against 0.60 one image at a time.
    """
    import queue
    from concurrent.futures import ThreadPoolExecutor

    free: queue.SimpleQueue = queue.SimpleQueue()
    for stream in streams:
        free.put(stream)

    def predict(raw):
        stream = free.get()  # one is free: no more images are in flight than there are streams
        try:
            return stream(raw)
        finally:
            free.put(stream)

    # Results come out in order, so the others go on only as far as this queue while a long image
    # holds the head: 8 per stream kept 2 streams busy over the stage-1 test images (4 per stream
    # lost a quarter of the speed).
    with ThreadPoolExecutor(max_workers=len(streams), thread_name_prefix="dsb-stream") as pool, \
            contextlib.closing(_in_order(pool, predict, items, 8 * len(streams), lambda item: item[2])) as done:
        for (image_id, path, raw), future in done:
            yield image_id, path, raw, _attempt(lambda f: f.result(), future, path, skips)


def _attempt(step, argument, path, skips):
    """``step(argument)``, or None after handing a BadDataError to ``skips`` (raised when there is none)."""
    try:
        return step(argument)
    except BadDataError as exc:
        if skips is None:
            raise
        skips(exc, path=path)
        return None


# ---------------------------------------------------------------- 4. writing


def write_labels(path, labels: np.ndarray) -> Path:
    """Write instance labels as an image that Fiji, napari and scikit-image open, atomically.

    The suffix of ``path`` says the format:

    - ``.png``: 16-bit greyscale PNG; above 65535 nuclei, which a PNG cannot
      hold, a 32-bit TIFF with the suffix ``.tif`` instead (``dsb predict --labels``);
    - ``.tif`` or ``.tiff``: greyscale TIFF, deflate-compressed, 16-bit
      (32-bit above 65535 nuclei) (``dsb segment``).

    Parameters
    ----------
    path : str or os.PathLike
        Destination.
    labels : (H, W) ndarray of int
        0 background, 1..N nuclei.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ValueError
        ``path`` has another suffix.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_labels(folder / "a.png", np.ones((2, 2), np.int32)).name
    'a.png'
    >>> write_labels(folder / "b.png", np.full((2, 2), 70_000)).name
    'b.tif'
    """
    labels = np.asarray(labels)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".tif", ".tiff"):
        raise ValueError(f"`path` ({path}) must end in .png, .tif or .tiff")
    wide = bool(labels.size) and labels.max() > _UINT16_MAX
    if suffix == ".png" and not wide:
        from PIL import Image

        with atomic_path(path) as tmp:
            Image.fromarray(labels.astype(np.uint16)).save(tmp, format="PNG")
        return path
    import tifffile

    if suffix == ".png":
        path = path.with_suffix(".tif")
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels.astype(np.uint32 if wide else np.uint16), photometric="minisblack",
                         compression="zlib")
    return path


def write_png(path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 array (:mod:`dsb.drawing`) as a PNG, atomically."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(tmp, format="PNG")
    return path
