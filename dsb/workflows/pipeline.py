"""Predicting the images of a folder, in order, with the network and the watershed overlapped.

Step 3 of the folder pipeline of ``dsb predict``, ``dsb segment`` and ``dsb
evaluate`` (:mod:`dsb.io.folders` finds and reads, :mod:`dsb.io.writers`
writes): :func:`predict_each` over :func:`nuclei_predictor`, i.e.
:func:`dsb.inference.predict.predict_nuclei` in its two stages. A network that
runs as several streams takes that many images at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from dsb.core.concurrency import in_order
from dsb.core.errors import BadDataError
from dsb.core.progress import track
from dsb.io.folders import Skips

__all__ = [
    "NucleiPredictor",
    "nuclei_predictor",
    "predict_each",
]


class NucleiPredictor:
    """A function from a raw image to its :class:`dsb.inference.predict.Nuclei` (:func:`dsb.inference.predict.predict_nuclei`),
    in two stages (network, then watershed) that :func:`predict_each` overlaps."""

    def __init__(self, model, config, *, tta: bool | None = None, diameter: float | None = None):
        self.model, self.config, self.tta, self.diameter = model, config, tta, diameter

    def network(self, raw, diameter: float | None = None):
        """The network's stage of one image, at ``diameter`` pixels when given, else the predictor's own."""
        from dsb.inference.predict import network_stage

        return network_stage(self.model, self.config, raw, tta=self.tta,
                             diameter=self.diameter if diameter is None else diameter)

    def watershed(self, stage):
        from dsb.inference.predict import watershed_stage

        return watershed_stage(stage, self.config)

    def __call__(self, raw, diameter: float | None = None):
        return self.watershed(self.network(raw) if diameter is None else self.network(raw, diameter))

    def streams(self) -> list[NucleiPredictor]:
        """One predictor per stream of the network (:meth:`dsb.network.engines.Network.streams`), to run at
        the same time on as many threads; ``[self]`` for a network that takes one call at a time.
        Each is made as ``type(self)(stream, config, tta=..., diameter=...)``: a subclass keeps
        that signature."""
        streams = self.model.streams() if callable(getattr(self.model, "streams", None)) else [self.model]
        if len(streams) < 2:
            return [self]
        return [type(self)(stream, self.config, tta=self.tta, diameter=self.diameter) for stream in streams]


def nuclei_predictor(model, config, *, tta: bool | None = None, diameter: float | None = None) -> NucleiPredictor:
    """A function from a raw image to its :class:`dsb.inference.predict.Nuclei` (:func:`dsb.inference.predict.predict_nuclei`)."""
    return NucleiPredictor(model, config, tta=tta, diameter=diameter)


def predict_each(
    predict: Callable,
    images: Iterable[tuple[str, Path | None, np.ndarray]],
    *,
    skips: Skips | None = None,
    progress: bool = False,
    length: int | None = None,
    label: str = "predicting",
    diameters: Mapping[str, float | None] | None = None,
) -> Iterator[tuple[str, Path | None, np.ndarray, object]]:
    """Predict the nuclei of each image, in order.

    A :func:`nuclei_predictor` whose network runs as several streams
    (:meth:`dsb.network.engines.Network.streams`: OpenVINO and ONNX Runtime on two
    cores or more) takes that many images at a time, one per thread, unless
    ``length`` says there is one image (then it takes the whole network);
    otherwise one image at a time, its watershed beside the network of the
    next. The nuclei are the same either way. A caller that may stop early
    closes the iterator (``contextlib.closing``) to stop the images in flight.

    Parameters
    ----------
    predict : callable
        Raw image to :class:`dsb.inference.predict.Nuclei` (:func:`nuclei_predictor`).
    images : iterable of (str, Path or None, ndarray)
        ``(id, path, raw image)``: :meth:`Checked.images`, or images in memory
        with no path.
    skips : Skips, optional
        Gets an image the network cannot take (BadDataError, named after its
        path); None raises it.
    progress, length, label
        The progress bar on stderr.
    diameters : mapping of str to float, optional
        The nucleus diameter in pixels of each image, by ``str(path)``, instead of the predictor's
        (``dsb segment --diameter-um``, which each file's pixel size makes its own); None (or a
        missing path) for the predictor's. A ``predict`` that is not a :class:`NucleiPredictor` is
        then called as ``predict(raw, diameter)`` for an image that has one.

    Yields
    ------
    (str, Path or None, ndarray, Nuclei)
        Id, path, raw image and its nuclei.
    """
    streams = predict.streams() if isinstance(predict, NucleiPredictor) and length != 1 else [predict]

    def diameter(path):
        return None if diameters is None else diameters.get(str(path))

    def with_diameter(step, path):
        """``step`` of one image, given its own diameter only where it has one."""
        size = diameter(path)
        return step if size is None else (lambda raw: step(raw, size))

    if len(streams) > 1:
        # The bar counts finished images (skipped ones too), not those handed to a stream.
        done = _in_streams(streams, images, skips, with_diameter)
        for row in track(done, length=length, label=label, enabled=progress):
            if row[-1] is not None:
                yield row
        return
    items = track(images, length=length, label=label, enabled=progress)
    if not isinstance(predict, NucleiPredictor):
        for image_id, path, raw in items:
            nuclei = _attempt(with_diameter(predict, path), raw, path, skips)
            if nuclei is not None:
                yield image_id, path, raw, nuclei
        return
    # One stream (Keras, one core, one image): the watershed of one image (numpy and scipy, one
    # core) runs while the network works on the next one (the engine's own threads).
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
            stage = _attempt(with_diameter(predict.network, path), raw, path, skips)
            yield from finished(pending)
            pending = None if stage is None else (image_id, path, raw, pool.submit(predict.watershed, stage))
        yield from finished(pending)


def _in_streams(streams: list[NucleiPredictor], items, skips, with_diameter):
    """:func:`predict_each` with one image per stream at a time, each on its own thread, in order;
    a skipped image comes out with None for its nuclei.

    A stream is one thread's share of the engine (:meth:`dsb.network.engines.Network.streams`): while one
    image is in the watershed, the network of the others goes on, with no core waiting for it.
    """
    import queue
    from concurrent.futures import ThreadPoolExecutor

    free: queue.SimpleQueue = queue.SimpleQueue()
    for stream in streams:
        free.put(stream)

    def predict(item):
        _, path, raw = item
        stream = free.get()  # one is free: no more images are in flight than there are streams
        try:
            return with_diameter(stream, path)(raw)
        finally:
            free.put(stream)

    # Results come out in order, so the others go on only as far as this queue while a long image
    # holds the head: 8 per stream kept 2 streams busy over the stage-1 test images (4 per stream
    # lost a quarter of the speed).
    with ThreadPoolExecutor(max_workers=len(streams), thread_name_prefix="dsb-stream") as pool, \
            contextlib.closing(in_order(pool, predict, items, 8 * len(streams))) as done:
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
