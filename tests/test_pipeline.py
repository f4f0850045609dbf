"""dsb.workflows.pipeline: finding images, reading each once, the skip policy, the one label writer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import SAMPLES, disc_image, make_discs, truth_labels, write_disc_stage
from PIL import Image

from dsb.core.errors import BadDataError
from dsb.io.folders import Skip, Skips, find_images, folder_images, read_images
from dsb.io.writers import write_labels
from dsb.io import folders
from dsb.workflows import pipeline
from dsb.workflows.pipeline import predict_each

# ---------------------------------------------------------------- finding


def test_folder_images_in_stage_and_flat_folders(tmp_path):
    stage = write_disc_stage(tmp_path / "stage")
    images, problems = folder_images(stage)
    assert list(images) == sorted(SAMPLES) and not problems
    assert images["a_one"] == stage / "a_one" / "images" / "a_one.png"

    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("x.png", "y.TIF", "notes.txt", ".hidden.png", "x.jpg", "bad,name.png"):
        (flat / name).write_bytes(b"")
    images, problems = folder_images(flat)
    assert list(images) == ["x", "y"]
    messages = sorted(str(p) for p in problems)
    assert len(messages) == 3
    assert any("notes.txt" in m and "not an image file" in m for m in messages)
    assert any("x.jpg" in m and "same id" in m for m in messages)
    assert any("bad,name.png" in m and "ImageId" in m for m in messages)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadDataError, match="holds no images"):
        folder_images(empty)
    with pytest.raises(BadDataError, match="not a folder"):
        folder_images(tmp_path / "missing")


def test_find_images_takes_image_files_from_folders(tmp_path):
    for name in ("b.png", "a.TIF", "c.jpeg", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"")
    (tmp_path / "empty").mkdir()

    images, problems = find_images([tmp_path, tmp_path / "b.png", tmp_path / "notes.txt",
                                    tmp_path / "empty", tmp_path / "gone.png"])
    assert {name: p.name for name, p in images.items()} == {"a": "a.TIF", "b": "b.png", "c": "c.jpeg"}  # b once
    assert [(Path(p.path).name, p.message.split()[0]) for p in problems] == [
        ("notes.txt", "suffix"), ("empty", "folder"), ("gone.png", "no")]
    assert all(isinstance(p, BadDataError) for p in problems)


def test_a_folders_label_images_and_overlays_are_not_its_images(tmp_path):
    """Cellpose's layout, and a folder dsb segment wrote into: the images, not their labels or overlays;
    a label-like name without its image beside it, or a file named explicitly, is an image."""
    for name in ("a.tif", "a_masks.tif", "a_overlay.png", "w1.ome.tif", "w1_cp_masks.png", "w1_labels.tif",
                 "b_labels.tif", "c_overlay.png"):
        (tmp_path / name).write_bytes(b"")
    images, problems = find_images([tmp_path])
    assert sorted(images) == ["a", "b_labels", "c_overlay", "w1"] and not problems
    images, _ = find_images([tmp_path / "a_masks.tif"])
    assert list(images) == ["a_masks"]


def test_find_images_refuses_two_files_with_one_name(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "x.png").write_bytes(b"")
    with pytest.raises(BadDataError, match="same name 'x'"):
        find_images([tmp_path / "a", tmp_path / "b" / "x.png"])


# ---------------------------------------------------------------- reading and skipping


@pytest.fixture
def reads(monkeypatch):
    """Count the decodes of each file by the pipeline."""
    counts: dict[str, int] = {}
    real = folders.read_image

    def counting(path, channel=None):
        counts[Path(path).name] = counts.get(Path(path).name, 0) + 1
        return real(path, channel)

    monkeypatch.setattr(folders, "read_image", counting)
    return counts


def test_each_image_is_decoded_once_while_it_fits_in_memory(tmp_path, reads):
    images, _ = folder_images(write_disc_stage(tmp_path / "stage"))
    checked = read_images(images, Skips())
    assert reads == {f"{i}.png": 1 for i in SAMPLES}
    for image_id, path, raw in checked.images(Skips()):
        np.testing.assert_array_equal(raw, disc_image(truth_labels(image_id)))
    assert reads == {f"{i}.png": 1 for i in SAMPLES}  # handed over, not read again


def test_images_beyond_the_memory_budget_are_read_again(tmp_path, reads):
    images, _ = folder_images(write_disc_stage(tmp_path / "stage"))
    checked = read_images(images, Skips(), cache_bytes=0)
    assert [image_id for image_id, _, _ in checked.images(Skips())] == sorted(SAMPLES)
    assert reads == {f"{i}.png": 2 for i in SAMPLES}


def test_a_bad_image_is_raised_or_recorded(tmp_path):
    stage = write_disc_stage(tmp_path / "stage")
    bad = stage / "b_two" / "images" / "b_two.png"
    bad.write_bytes(b"not a png")
    images, _ = folder_images(stage)
    with pytest.raises(BadDataError) as info:
        read_images(images, Skips())
    assert str(info.value).startswith(f"{bad}: ")
    skips = Skips(skip_bad=True)
    checked = read_images(images, skips)
    assert list(checked.paths) == ["a_one", "c_none"]
    assert [s.path for s in skips.records] == [str(bad)]
    assert str(skips.records[0]) == str(info.value)


def test_a_bad_image_stops_the_reads_ahead(tmp_path, reads, monkeypatch):
    """Images are decoded on every core, at most two per core ahead of the check, in order: the
    first bad one stops the run without decoding the rest of a large folder."""
    monkeypatch.setattr("dsb.io.folders.usable_cores", lambda: 2)
    stage = write_disc_stage(tmp_path / "stage")
    images, _ = folder_images(stage)
    first = next(iter(images.values()))
    first.write_bytes(b"not a png")
    many = dict(images)
    for k in range(20):  # the same good image under 20 more ids, after the bad one
        many[f"z{k:02d}"] = images["c_none"]
    with pytest.raises(BadDataError) as info:
        read_images(many, Skips())
    assert str(info.value).startswith(f"{first}: ")
    assert sum(reads.values()) <= 4
    import threading

    threads = set()
    counting = folders.read_image
    monkeypatch.setattr(folders, "read_image", lambda path, channel=None: threads.add(threading.current_thread().name)
                        or counting(path, channel))
    skips = Skips(skip_bad=True)
    checked = read_images(many, skips)
    assert list(checked.paths) == list(many)[1:]
    assert [s.path for s in skips.records] == [str(first)]
    assert threads and all(name.startswith("dsb-read") for name in threads)  # not on the caller's thread


def test_skip_records_name_the_file_a_prediction_failed_on(tmp_path):
    def predict(raw):
        raise BadDataError("the network cannot take it")

    skips = Skips(skip_bad=True)
    found = list(predict_each(predict, [("x", tmp_path / "x.png", np.zeros((2, 2)))], skips=skips))
    assert found == [] and skips.records == [Skip(str(tmp_path / "x.png"), "the network cannot take it")]
    assert str(skips.records[0]) == f"{tmp_path / 'x.png'}: the network cannot take it"
    with pytest.raises(BadDataError, match="cannot take it"):
        list(predict_each(predict, [("x", None, np.zeros((2, 2)))]))


# ---------------------------------------------------------------- the label writer


def test_write_labels_png_is_16_bit_then_a_32_bit_tiff(tmp_path):
    labels = make_discs((30, 40), ((10, 10), (20, 30)), 5)
    path = write_labels(tmp_path / "a.png", labels)
    assert path == tmp_path / "a.png"
    back = np.asarray(Image.open(path))
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)

    many = np.arange(300 * 300, dtype=np.int32).reshape(300, 300)  # 89999 labels: beyond 16 bits
    path = write_labels(tmp_path / "b.png", many)
    assert path == tmp_path / "b.tif" and not (tmp_path / "b.png").exists()
    np.testing.assert_array_equal(tifffile.imread(path), many)
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.tif"]


def test_write_labels_tiff_is_16_bit_then_32_bit(tmp_path):
    labels = make_discs()
    path = write_labels(tmp_path / "x_labels.tif", labels)
    back = tifffile.imread(path)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)
    assert [p.name for p in tmp_path.iterdir()] == ["x_labels.tif"]  # no temporary left

    many = np.arange(70_000, dtype=np.int32).reshape(280, 250)
    assert tifffile.imread(write_labels(tmp_path / "many.tif", many)).dtype == np.uint32


def test_write_labels_refuses_other_formats(tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.png, \.tif or \.tiff"):
        write_labels(tmp_path / "x.jpg", np.zeros((2, 2), np.int32))
    assert not list(tmp_path.iterdir())


def test_the_two_stage_predictor_yields_in_order_and_matches_one_at_a_time(tmp_path):
    import threading

    from conftest import CONFIG, threshold_model

    threads = set()

    class Watching(pipeline.NucleiPredictor):
        def watershed(self, stage):
            threads.add(threading.current_thread().name)
            return super().watershed(stage)

    predictor = Watching(threshold_model, CONFIG)
    images = [(image_id, None, disc_image(truth_labels(image_id))) for image_id in SAMPLES]
    staged = list(predict_each(predictor, images))
    single = list(predict_each(lambda raw: predictor(raw), images))
    assert [row[0] for row in staged] == list(SAMPLES)
    for (_, _, _, a), (_, _, _, b) in zip(staged, single):
        np.testing.assert_array_equal(a.labels, b.labels)
    assert any(name.startswith("dsb-watershed") for name in threads), threads


def test_the_two_stage_predictor_skips_an_image_either_stage_refuses(tmp_path):
    from conftest import CONFIG, threshold_model

    class Refusing(pipeline.NucleiPredictor):
        def network(self, raw):
            if raw.shape == (1, 1):
                raise BadDataError("too small for the network")
            return super().network(raw)

        def watershed(self, stage):
            if isinstance(stage, tuple) and stage[-1] == (3, 3):  # the image shape comes last
                raise BadDataError("nothing to flood")
            return super().watershed(stage)

    good = disc_image(truth_labels("a_one"))
    images = [("tiny", tmp_path / "tiny.png", np.zeros((1, 1), np.uint8)), ("ok", None, good),
              ("three", tmp_path / "three.png", np.zeros((3, 3), np.uint8)), ("last", None, good)]
    skips = Skips(skip_bad=True)
    found = [row[0] for row in predict_each(Refusing(threshold_model, CONFIG), images, skips=skips)]
    assert found == ["ok", "last"]
    assert sorted(s.message for s in skips.records) == ["nothing to flood", "too small for the network"]
    with pytest.raises(BadDataError, match="nothing to flood"):
        list(predict_each(Refusing(threshold_model, CONFIG), images[1:3]))


class _TwoStreams:
    """A network with two streams that wait for each other on their first call: a folder predicted
    one image at a time breaks the barrier. Records which threads called which stream."""

    def __init__(self):
        import threading

        self.barrier = threading.Barrier(2, timeout=10)
        self.calls: list[tuple[int, str]] = []
        self.busy = [threading.Lock(), threading.Lock()]
        self.overlapped = []
        self.main_calls = 0

    def __call__(self, batch):
        from conftest import threshold_model

        self.main_calls += 1
        return threshold_model(batch)

    def streams(self):
        return [_Stream(self, 0), _Stream(self, 1)]


class _Stream:
    def __init__(self, owner, index):
        self.owner, self.index, self.first = owner, index, True

    def __call__(self, batch):
        import threading

        from conftest import threshold_model

        if not self.owner.busy[self.index].acquire(blocking=False):
            self.owner.overlapped.append(self.index)  # two threads in one stream at once
            raise AssertionError("a stream was called from two threads at once")
        try:
            self.owner.calls.append((self.index, threading.current_thread().name))
            if self.first:
                self.first = False
                self.owner.barrier.wait()
            return threshold_model(batch)
        finally:
            self.owner.busy[self.index].release()


class _RefusingTiny(pipeline.NucleiPredictor):
    """Refuses a 3x3 image at the network stage."""

    def network(self, raw):
        if raw.shape == (3, 3):
            raise BadDataError("too small for the network")
        return super().network(raw)


def test_a_network_with_streams_predicts_that_many_images_at_once_in_order():
    from conftest import CONFIG, threshold_model

    images = [(f"{image_id}-{k}", None, disc_image(truth_labels(image_id))) for k in range(3) for image_id in SAMPLES]
    network = _TwoStreams()
    found = list(predict_each(pipeline.nuclei_predictor(network, CONFIG), images, length=len(images)))
    alone = list(predict_each(lambda raw: pipeline.nuclei_predictor(threshold_model, CONFIG)(raw), images))
    assert [row[0] for row in found] == [row[0] for row in images]
    for (_, _, _, a), (_, _, _, b) in zip(found, alone):
        np.testing.assert_array_equal(a.labels, b.labels)
    assert {index for index, _ in network.calls} == {0, 1}  # the barrier passed: two images were in flight
    assert all(name.startswith("dsb-stream") for _, name in network.calls)
    assert network.main_calls == 0 and not network.overlapped


def test_one_image_takes_the_whole_network_not_a_stream():
    from conftest import CONFIG

    network = _TwoStreams()
    image = disc_image(truth_labels(next(iter(SAMPLES))))
    found = list(predict_each(pipeline.nuclei_predictor(network, CONFIG), [("a", None, image)], length=1))
    assert len(found) == 1 and found[0][-1].labels.max() > 0
    assert network.main_calls > 0 and network.calls == []


def test_streams_skip_an_image_the_prediction_refuses_and_keep_the_rest():
    from conftest import CONFIG

    good = disc_image(truth_labels(next(iter(SAMPLES))))
    images = [("a", None, good), ("bad", Path("bad.png"), np.zeros((3, 3), np.uint8)), ("b", None, good),
              ("c", None, good)]
    skips = Skips(skip_bad=True)
    found = [row[0] for row in predict_each(_RefusingTiny(_TwoStreams(), CONFIG), images, skips=skips, length=4)]
    assert found == ["a", "b", "c"]
    assert [(Path(s.path).name, s.message) for s in skips.records] == [("bad.png", "too small for the network")]
    with pytest.raises(BadDataError, match="too small"):
        list(predict_each(_RefusingTiny(_TwoStreams(), CONFIG), images, length=4))


def test_stopping_early_leaves_no_stream_running():
    import threading
    import time

    from conftest import CONFIG

    started = []

    class Counting(pipeline.NucleiPredictor):
        def network(self, raw):
            started.append(1)
            time.sleep(0.05)  # slower than the main thread's way from next() to close(), on any machine
            return super().network(raw)

    image = disc_image(truth_labels(next(iter(SAMPLES))))
    images = [(str(k), None, image) for k in range(40)]
    found = predict_each(Counting(_TwoStreams(), CONFIG), images, length=len(images))
    assert next(found)[0] == "0"
    found.close()  # the pool is shut down, the images not started are cancelled
    assert not [t for t in threading.enumerate() if t.name.startswith("dsb-stream")]
    # 16 images (8 per stream) were handed to the pool; only those already running went on.
    assert 2 <= len(started) < 8


def test_with_streams_the_progress_bar_counts_finished_images_skipped_ones_included(monkeypatch):
    from conftest import CONFIG

    from dsb.inference.predict import Nuclei

    counted = []

    def recording_track(iterable, *, length=None, label="", enabled=True):
        for item in iterable:
            counted.append(item)
            yield item

    monkeypatch.setattr(pipeline, "track", recording_track)

    good = disc_image(truth_labels(next(iter(SAMPLES))))
    images = [("a", None, good), ("bad", Path("bad.png"), np.zeros((3, 3), np.uint8)), ("b", None, good)]
    found = list(predict_each(_RefusingTiny(_TwoStreams(), CONFIG), images, skips=Skips(skip_bad=True), length=3))
    assert [row[0] for row in found] == ["a", "b"]
    # Each tick is an image whose prediction is over: its nuclei, or None when it was skipped.
    assert [row[0] for row in counted] == ["a", "bad", "b"]
    assert [type(row[-1]) for row in counted] == [Nuclei, type(None), Nuclei]


def test_a_failed_write_stops_the_images_in_flight(tmp_path, monkeypatch):
    import threading

    from conftest import CONFIG

    import dsb.workflows.predict_folder
    from dsb.core.errors import EnvironmentProblem

    stage = tmp_path / "stage"
    for k in range(12):
        labels = truth_labels("b_two")
        (stage / f"i{k:02d}" / "images").mkdir(parents=True)
        Image.fromarray(disc_image(labels)).save(stage / f"i{k:02d}" / "images" / f"i{k:02d}.png")
    writes = []

    def failing_write(path, labels):
        writes.append(path)
        if len(writes) == 2:
            raise EnvironmentProblem("no space left on device", path=path)
        return write_labels(path, labels)

    monkeypatch.setattr(dsb.workflows.predict_folder, "write_labels", failing_write)
    out = tmp_path / "out.csv"
    with pytest.raises(EnvironmentProblem, match="no space") as error:
        dsb.workflows.predict_folder.predict_images(_TwoStreams(), CONFIG, stage, out_csv=out,
                                                    labels_dir=tmp_path / "labels", progress=False)
    # The pool was shut down with the error, not left to wait for a generator nobody reads while
    # the traceback (kept here, as a logger or debugger would) holds it.
    assert error.traceback
    assert not [t for t in threading.enumerate() if t.name.startswith("dsb-stream")]
    assert not out.exists() and not (tmp_path / "labels").exists()


@pytest.mark.parametrize("streams", [1, 2])
def test_each_image_at_its_own_diameter(streams):
    """``diameters`` (dsb segment --diameter-um: each file's pixel size makes its own) reach each image's
    network stage, on one stream and on several; an image missing from them takes the predictor's."""
    from conftest import CONFIG, threshold_model

    seen = {}

    class Recording(pipeline.NucleiPredictor):
        def network(self, raw, diameter=None):
            seen[int(raw[0, 0])] = self.diameter if diameter is None else diameter
            return super().network(raw, diameter)

    good = disc_image(truth_labels(next(iter(SAMPLES))))
    images = []
    for k, name in enumerate("abc"):
        marked = good.copy()
        marked[0, 0] = k  # tells the images apart in the network stage
        images.append((name, Path(f"{name}.png"), marked))
    network = _TwoStreams() if streams == 2 else threshold_model
    found = list(predict_each(Recording(network, CONFIG, diameter=20), images, length=3,
                              diameters={"a.png": 12.0, "c.png": 40.0}))
    assert [row[0] for row in found] == ["a", "b", "c"]
    assert seen == {0: 12.0, 1: 20, 2: 40.0}
    assert [row[-1].diameter for row in found] == [12.0, 20, 40.0]
