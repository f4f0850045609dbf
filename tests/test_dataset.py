"""Reading images and masks, the stage layout, and the prepared training cache."""

from __future__ import annotations

import collections
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import make_discs
from PIL import Image

from dsb.core.config import PreprocessConfig
from dsb.core.errors import BadDataError
from dsb.inference.preprocess import IMAGE_TYPES, preprocess_image, to_uint8
from dsb.training import cache as cache_module
from dsb.io.images import (
    MaskFixWarning,
    find_stage,
    image_path,
    image_shapes,
    list_ids,
    read_image,
    read_labels,
    read_mask,
)
from dsb.training.cache import cache_path, load_prepared, prepare, read_prepared

RNG = np.random.default_rng(1)


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _sample(stage: Path, image_id: str, image: np.ndarray, labels: np.ndarray, *, mask_names=None) -> Path:
    """Write one image folder: images/{id}.png and one 0/255 mask PNG per label."""
    _png(stage / image_id / "images" / f"{image_id}.png", image)
    (stage / image_id / "masks").mkdir(parents=True, exist_ok=True)
    n = int(labels.max())
    names = mask_names or [f"m{k:02d}.png" for k in range(1, n + 1)]
    for k, name in zip(range(1, n + 1), names):
        _png(stage / image_id / "masks" / name, np.where(labels == k, 255, 0).astype(np.uint8))
    return stage / image_id


def _fluorescence(labels):
    grey = np.where(labels > 0, 180, 20).astype(np.uint8)
    return np.dstack([grey, grey, grey, np.full_like(grey, 255)])


def _brightfield(labels):
    return np.where(labels > 0, 80, 210).astype(np.uint8)


def _stained(labels):
    img = np.empty(labels.shape + (3,), np.uint8)
    img[:] = (225, 190, 215)
    img[labels > 0] = (155, 68, 167)
    return img


@pytest.fixture
def stage(tmp_path) -> Path:
    """A small stage1_train: one image of each type, in DATA/stage1_train."""
    stage = tmp_path / "data" / "stage1_train"
    shapes = {"a_fluo": (48, 64), "b_bright": (40, 40), "c_stain": (64, 56)}
    makers = {"a_fluo": _fluorescence, "b_bright": _brightfield, "c_stain": _stained}
    for image_id, shape in shapes.items():
        labels = make_discs(shape, ((12, 12), (shape[0] - 14, shape[1] - 14)), 7)
        _sample(stage, image_id, makers[image_id](labels), labels)
    return stage


# ---------------------------------------------------------------- read_image


def test_read_image_keeps_what_is_stored(tmp_path):
    rgba = RNG.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    assert np.array_equal(read_image(_png(tmp_path / "rgba.png", rgba)), rgba)
    rgb = rgba[..., :3].copy()
    assert np.array_equal(read_image(_png(tmp_path / "rgb.png", rgb)), rgb)
    grey = rgba[..., 0].copy()
    assert np.array_equal(read_image(_png(tmp_path / "grey.png", grey)), grey)
    deep = RNG.integers(0, 65536, (20, 30), dtype=np.uint16)
    got = read_image(_png(tmp_path / "deep.png", deep))
    assert got.dtype == np.uint16 and np.array_equal(got, deep)


def test_read_image_palette_tiff_and_jpeg(tmp_path):
    import tifffile

    pal = Image.fromarray(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)).convert("P")
    pal.save(tmp_path / "pal.png")
    got = read_image(tmp_path / "pal.png")
    assert got.shape == (16, 16, 3) and got.dtype == np.uint8

    deep = RNG.integers(0, 4096, (24, 32), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "deep.tif", deep)
    assert np.array_equal(read_image(tmp_path / "deep.tif"), deep)
    planar = RNG.integers(0, 256, (3, 24, 32), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tiff", planar, photometric="rgb", planarconfig="separate")
    assert np.array_equal(read_image(tmp_path / "planar.tiff"), np.moveaxis(planar, 0, -1))

    Image.fromarray(RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    got = read_image(tmp_path / "photo.jpg")
    assert got.shape == (24, 32, 3) and got.dtype == np.uint8


def _corrupt_png(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 8
    data[start:start + 16] = bytes(16)  # scribble over the compressed pixels
    path.write_bytes(bytes(data))
    return path


def test_read_image_errors_name_the_file(tmp_path):
    good = _png(tmp_path / "good.png", RNG.integers(0, 256, (64, 64), dtype=np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    corrupt = _corrupt_png(_png(tmp_path / "corrupt.png", RNG.integers(0, 256, (64, 64), dtype=np.uint8)))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not a picture\n")
    cases = {
        tmp_path / "missing.png": "not found",
        empty: "empty file",
        text: "not an image",
        truncated: "corrupt or truncated",
        corrupt: "corrupt or truncated",
        tmp_path: "is a folder",
    }
    for path, words in cases.items():
        with pytest.raises(BadDataError, match=words) as info:
            read_image(path)
        assert str(info.value).startswith(str(path)) and info.value.exit_code == 3
        assert "\n" not in str(info.value)


def test_read_image_rejects_stacks(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((6, 16, 16), np.uint8))
    with pytest.raises(BadDataError, match="stack"):
        read_image(tmp_path / "stack.tif")


# ---------------------------------------------------------------- masks and labels


def test_read_labels_orders_masks_by_file_name(tmp_path):
    labels = make_discs((40, 40), ((10, 10), (28, 28), (10, 30)), 5)
    sample = _sample(tmp_path / "stage", "img", _brightfield(labels), labels, mask_names=["c.png", "a.png", "b.png"])
    got = read_labels(sample)  # shape from the image
    assert got.dtype == np.int32 and got.shape == (40, 40)
    # a.png holds disc 2, b.png disc 3, c.png disc 1: sorted names give 1, 2, 3
    expected = np.select([labels == 2, labels == 3, labels == 1], [1, 2, 3], 0)
    assert np.array_equal(got, expected)
    assert np.array_equal(read_labels(sample, (40, 40)), expected)


def test_overlapping_masks_go_to_the_earlier_one_and_are_reported(tmp_path):
    sample = tmp_path / "stage" / "img"
    _png(sample / "images" / "img.png", np.zeros((20, 20), np.uint8))
    first = np.zeros((20, 20), np.uint8)
    first[2:10, 2:10] = 255
    second = np.zeros((20, 20), np.uint8)
    second[8:16, 8:16] = 255  # 4 pixels shared with the first
    inside = np.zeros((20, 20), np.uint8)
    inside[3:5, 3:5] = 255  # wholly inside the first
    _png(sample / "masks" / "1.png", first)
    _png(sample / "masks" / "2.png", second)
    _png(sample / "masks" / "3.png", inside)
    _png(sample / "masks" / "4.png", np.zeros((20, 20), np.uint8))  # empty
    last = np.zeros((20, 20), np.uint8)
    last[18:, 18:] = 255
    _png(sample / "masks" / "5.png", last)

    labels, fixes = read_labels(sample, return_fixes=True)
    assert labels[9, 9] == 1 and labels[15, 15] == 2 and labels[19, 19] == 3  # consecutive: 3 and 4 skipped
    assert (labels == 1).sum() == 64 and (labels == 2).sum() == 60 and labels.max() == 3
    assert fixes.overlapping == (("2.png", 4), ("3.png", 4)) and fixes.overlap_pixels == 8
    assert fixes.covered == ("3.png",) and fixes.empty == ("4.png",)
    assert "2 mask(s) overlap" in str(fixes) and "1 empty" in str(fixes)

    with pytest.warns(MaskFixWarning, match="overlap"):
        assert np.array_equal(read_labels(sample), labels)


def test_clean_masks_give_no_fixes_and_no_warning(tmp_path):
    labels = make_discs()
    sample = _sample(tmp_path / "stage", "img", _brightfield(labels), labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, fixes = read_labels(sample, return_fixes=True)
        read_labels(sample)
    assert not fixes and str(fixes) == "no fixes"
    assert np.array_equal(got, labels)


def test_mask_of_the_wrong_size_names_the_mask(tmp_path):
    labels = make_discs()
    sample = _sample(tmp_path / "stage", "img", _brightfield(labels), labels)
    _png(sample / "masks" / "zz.png", np.zeros((64, 60), np.uint8))
    with pytest.raises(BadDataError, match=r"mask is 64x60 but its image is 64x64") as info:
        read_labels(sample)
    assert str(info.value).startswith(str(sample / "masks" / "zz.png"))


def test_unreadable_mask_and_missing_masks_folder(tmp_path):
    labels = make_discs()
    sample = _sample(tmp_path / "stage", "img", _brightfield(labels), labels)
    (sample / "masks" / "m01.png").write_bytes(b"")
    with pytest.raises(BadDataError, match="empty file") as info:
        read_labels(sample)
    assert "m01.png" in str(info.value)
    (tmp_path / "stage" / "bare" / "images").mkdir(parents=True)
    with pytest.raises(BadDataError, match="no masks/ folder"):
        read_labels(tmp_path / "stage" / "bare", (4, 4))


def test_read_mask_uses_colour_not_alpha(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[2:4, 2:4, :3] = 255
    assert read_mask(_png(tmp_path / "m.png", rgba)).sum() == 4


# ---------------------------------------------------------------- stage folders


def test_list_ids_and_image_shapes(stage):
    (stage / ".cache").mkdir()
    (stage / "stray").mkdir()  # no images/ folder: not an image
    (stage / "README.txt").write_text("hi")
    assert list_ids(stage) == ["a_fluo", "b_bright", "c_stain"]
    assert image_shapes(stage) == {"a_fluo": (48, 64), "b_bright": (40, 40), "c_stain": (64, 56)}
    assert image_path(stage, "a_fluo") == stage / "a_fluo" / "images" / "a_fluo.png"


def test_image_path_finds_other_suffixes(tmp_path):
    import tifffile

    folder = tmp_path / "x" / "images"
    folder.mkdir(parents=True)
    tifffile.imwrite(folder / "x.tif", np.zeros((5, 7), np.uint16))
    assert image_path(tmp_path, "x") == folder / "x.tif"
    assert image_shapes(tmp_path) == {"x": (5, 7)}
    assert image_path(tmp_path, "nothing") == tmp_path / "nothing" / "images" / "nothing.png"


def test_list_ids_errors(tmp_path):
    with pytest.raises(BadDataError, match="folder not found"):
        list_ids(tmp_path / "nope")
    with pytest.raises(BadDataError, match="holds no images"):
        list_ids(tmp_path)


def test_find_stage(stage):
    data = stage.parent
    assert find_stage(data) == stage
    assert find_stage(stage) == stage
    with pytest.raises(BadDataError, match="dsb fetch"):
        find_stage(data.parent)


# ---------------------------------------------------------------- the prepared cache


def test_prepare_builds_a_complete_cache(stage, capsys):
    data = stage.parent
    path = prepare(data, PreprocessConfig(), workers=1, progress=True)
    assert path == cache_path(data, PreprocessConfig()) and path.parent == data / ".cache"
    assert sorted(p.name for p in path.iterdir()) == [
        "groups.csv", "images.npz", "labels.npz", "manifest.json", "types.csv"
    ]
    assert (path / "types.csv").read_text().splitlines() == [
        "ImageId,type,height,width",
        "a_fluo,fluorescence,48,64",
        "b_bright,brightfield,40,40",
        "c_stain,stained,64,56",
    ]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["images"] == 3 and manifest["nuclei"] == 6
    assert "3 images (1 fluorescence, 1 brightfield, 1 stained), 6 nuclei" in capsys.readouterr().err

    prepared = load_prepared(data, PreprocessConfig())
    assert not prepared.built and prepared.path == path and len(prepared) == 3
    assert prepared.ids == ["a_fluo", "b_bright", "c_stain"]
    assert prepared.types == ["fluorescence", "brightfield", "stained"]
    for image_id, image, labels in zip(prepared.ids, prepared.images, prepared.labels):
        raw = read_image(image_path(stage, image_id))
        assert image.dtype == np.uint8 and labels.dtype == np.int32
        assert np.array_equal(image, to_uint8(preprocess_image(raw, PreprocessConfig())))
        assert np.array_equal(labels, read_labels(stage / image_id))
    assert len(prepared.checksum) == 64 and prepared.fixes == {}


def test_prepare_rebuilds_only_when_data_or_parameters_change(stage):
    data = stage.parent
    first = load_prepared(data, workers=1)
    assert first.built
    assert not load_prepared(data, workers=1).built
    # target-only parameters share the cache
    assert cache_path(data, PreprocessConfig(border_width=5)) == first.path
    assert not load_prepared(data, PreprocessConfig(border_width=5), workers=1).built
    # preprocessing parameters get their own cache
    other = load_prepared(data, PreprocessConfig(polarity="keep"), workers=1)
    assert other.built and other.path != first.path
    # changed data: one mask rewritten (different size and time) rebuilds
    mask = stage / "b_bright" / "masks" / "m02.png"
    _png(mask, np.zeros((40, 40), np.uint8))
    os.utime(mask, ns=(time.time_ns(), time.time_ns() + 10**9))
    again = load_prepared(data, workers=1)
    assert again.built and again.path == first.path
    assert again.labels[1].max() == 1 and again.checksum != first.checksum
    # a new image rebuilds too
    labels = make_discs((32, 32), ((16, 16),), 6)
    _sample(stage, "d_new", _fluorescence(labels), labels)
    assert load_prepared(data, workers=1).ids[-1] == "d_new"


def test_prepare_reports_mask_fixes(stage, capsys):
    overlap = np.zeros((48, 64), np.uint8)
    overlap[5:15, 5:15] = 255  # overlaps disc 1 of a_fluo
    _png(stage / "a_fluo" / "masks" / "m03.png", overlap)
    _png(stage / "a_fluo" / "masks" / "m04.png", np.zeros((48, 64), np.uint8))
    prepared = load_prepared(stage.parent, workers=1, progress=True)
    err = capsys.readouterr().err
    assert "mask fixes: 1 image(s) with overlapping masks" in err and "1 empty mask(s) skipped" in err
    assert set(prepared.fixes) == {"a_fluo"} and prepared.fixes["a_fluo"].empty == ("m04.png",)
    assert "a_fluo" in prepared.summary()
    # read back from disk, the fixes are still known
    assert load_prepared(stage.parent, workers=1).fixes == prepared.fixes


def test_prepare_in_two_processes_matches_one(stage, tmp_path):
    one = load_prepared(stage, workers=1, cache_dir=tmp_path / "one")
    two = load_prepared(stage, workers=2, cache_dir=tmp_path / "two")
    assert one.checksum == two.checksum and one.types == two.types
    assert not (stage / ".cache").exists()


def test_failed_prepare_leaves_no_cache(stage):
    (stage / "c_stain" / "masks" / "m01.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(BadDataError, match="m01.png"):
        prepare(stage.parent, workers=1)
    cache = stage.parent / ".cache"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_interrupted_prepare_leaves_no_cache_and_keeps_the_old_one(stage, monkeypatch):
    data = stage.parent
    good = prepare(data, workers=1)
    before = (good / "manifest.json").read_text()
    labels = make_discs((32, 32), ((16, 16),), 6)
    _sample(stage, "d_new", _fluorescence(labels), labels)
    real = cache_module._prepare_one
    seen = []

    def interrupted(task):
        seen.append(task[1])
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(cache_module, "_prepare_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(data, workers=1)
    assert (good / "manifest.json").read_text() == before  # the old, complete cache is untouched
    assert sorted(p.name for p in good.parent.iterdir()) == [good.name]  # no half-written folder
    monkeypatch.setattr(cache_module, "_prepare_one", real)
    assert load_prepared(data, workers=1).ids[-1] == "d_new"


def test_damaged_cache_is_reported(stage):
    path = prepare(stage.parent, workers=1)
    (path / "images.npz").write_bytes(b"garbage")
    with pytest.raises(BadDataError, match="damaged"):
        load_prepared(stage.parent)


def test_a_cache_copied_away_from_its_stage_folder_reads_the_same(stage, tmp_path):
    import shutil

    here = load_prepared(stage.parent, workers=1)
    copy = shutil.copytree(here.path, tmp_path / "elsewhere")
    shutil.rmtree(stage)  # the images it was built from are gone
    away = read_prepared(copy)
    assert away.path == copy and not away.built
    assert away.ids == here.ids and away.types == here.types and away.groups == here.groups
    assert away.checksum == here.checksum and away.fixes == here.fixes
    for a, b in zip(away.images + away.labels, here.images + here.labels):
        np.testing.assert_array_equal(a, b)
    (copy / "manifest.json").unlink()
    with pytest.raises(BadDataError, match="manifest.json") as info:
        read_prepared(copy)
    assert str(copy) in str(info.value)


# ---------------------------------------------------------------- the real training set


@pytest.fixture(scope="module")
def real_prepared(train_dir, tmp_path_factory):
    # Cold and warm times are bench/bench_prepare.py's to measure.
    cache = tmp_path_factory.mktemp("prepared")
    cold = load_prepared(train_dir, PreprocessConfig(), cache_dir=cache)
    warm = load_prepared(train_dir, PreprocessConfig(), cache_dir=cache)
    assert cold.built and not warm.built
    return warm


@pytest.mark.slow
def test_real_prepare(real_prepared, train_dir):
    prepared = real_prepared
    assert len(prepared) == 664 and prepared.ids == list_ids(train_dir)
    assert sum(int(lab.max()) for lab in prepared.labels) == 28986
    assert collections.Counter(prepared.types) == {"fluorescence": 541, "brightfield": 16, "stained": 107}
    # six training images have masks overlapping by a pixel or two: fixed and reported, not fatal
    assert len(prepared.fixes) == 6 and all(f.overlapping and f.overlap_pixels <= 2 for f in prepared.fixes.values())
    print(prepared.summary())
    i = prepared.ids.index("0a7d30b252359a10fd298b638b90cb9ada3acced4e0c0e5a3692013f432ee4e9")
    labels, fixes = read_labels(train_dir / prepared.ids[i], return_fixes=True)
    assert np.array_equal(prepared.labels[i], labels) and fixes == prepared.fixes[prepared.ids[i]]


@pytest.mark.slow
def test_real_polarity_all_training_images(real_prepared):
    """After preprocessing, nuclei are brighter than background in (nearly) every training image, per type."""
    prepared = real_prepared
    results = collections.defaultdict(list)
    for image_id, image, labels, kind in zip(prepared.ids, prepared.images, prepared.labels, prepared.types):
        inside, outside = image[labels > 0], image[labels == 0]
        results[kind].append((image_id, float(inside.mean()) - float(outside.mean())))
    for kind in IMAGE_TYPES:
        rows = results[kind]
        failures = [image_id for image_id, diff in rows if diff <= 0]
        fraction = 1 - len(failures) / len(rows)
        print(f"{kind}: {len(rows) - len(failures)}/{len(rows)} brighter inside the masks "
              f"(mean difference {np.mean([d for _, d in rows]):.0f}/255); failures: {failures}")
        assert fraction >= 0.98, failures


def test_cache_keeps_diameters_and_groups(stage):
    from dsb.inference.scale import median_diameter
    from dsb.training.cache import load_groups

    data = stage.parent
    built = load_prepared(data, PreprocessConfig(), workers=1)
    again = load_prepared(data, PreprocessConfig(), workers=1)
    assert built.built and not again.built
    expected = [median_diameter(read_labels(stage / i)) for i in built.ids]
    for prepared in (built, again):
        assert prepared.diameters == pytest.approx(expected, abs=1e-3)
        assert all(isinstance(d, float) for d in prepared.diameters)
        # one image per type: one group each, named by its type
        assert prepared.groups == ["fluorescence", "brightfield", "stained"]
    groups, diameters = load_groups(data, PreprocessConfig())
    assert groups == dict(zip(built.ids, built.groups))
    assert list(diameters.values()) == pytest.approx(expected, abs=1e-3)
    assert (built.path / "groups.csv").read_text().startswith("ImageId,group,diameter,log_height,")
    assert "group stained: 1 stained images" in built.summary()
