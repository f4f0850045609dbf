"""The finer pass for the small nuclei of an image shrunk for its large ones (dsb.inference.small_nuclei)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

import dsb
from dsb.core.config import Config
from dsb.core.errors import BadDataError
from dsb.inference import predict as predict_module
from dsb.inference.predict import predict_nuclei
from dsb.inference.small_nuclei import SHRUNK, add_small_nuclei, small_pass_scale
from dsb.kaggle.metric import image_score


def _square(r0, c0, side, label, into):
    into[r0 : r0 + side, c0 : c0 + side] = label


def test_only_small_sure_nuclei_off_the_first_pass_are_added():
    first = np.zeros((60, 60), np.int32)
    _square(0, 0, 10, 1, first)  # two nuclei of 100 pixels: small means under 40
    _square(0, 20, 10, 2, first)
    fine = np.zeros_like(first)
    _square(40, 40, 4, 1, fine)  # small, sure, in the background: added
    _square(8, 8, 4, 2, fine)  # small and sure, but 4 of its 16 pixels on nucleus 1 (25 %)
    _square(40, 5, 4, 3, fine)  # small, in the background, but unsure
    _square(30, 30, 7, 4, fine)  # in the background and sure, but 49 pixels: not small
    _square(9, 28, 5, 5, fine)  # 2 of its 25 pixels on nucleus 2 (8 %): added, off it
    _square(2, 2, 3, 6, fine)  # inside nucleus 1: a fragment of it seen closer
    fine_sure = np.array([0.95, 0.97, 0.6, 0.99, 0.92, 0.99], np.float32)

    labels, sure = add_small_nuclei(first, np.array([0.99, 0.98], np.float32), fine, fine_sure)

    np.testing.assert_array_equal(labels[first > 0], first[first > 0])  # the first pass's nuclei unchanged
    assert labels.max() == 4 and labels.dtype == np.int32
    np.testing.assert_array_equal(labels == 3, fine == 1)
    np.testing.assert_array_equal(labels == 4, (fine == 5) & (first == 0))
    assert int((labels == 4).sum()) == 23
    np.testing.assert_allclose(sure, [0.99, 0.98, 0.95, 0.92])


def test_nothing_is_added_without_nuclei_to_be_small_against_or_to_add():
    fine = np.zeros((20, 20), np.int32)
    fine[2:5, 2:5] = 1
    empty = np.zeros_like(fine)
    labels, sure = add_small_nuclei(empty, np.zeros(0, np.float32), fine, np.array([0.99], np.float32))
    assert labels.max() == 0 and sure.size == 0
    first = np.zeros_like(fine)
    first[10:20, 10:20] = 1
    labels, sure = add_small_nuclei(first, np.array([0.9], np.float32), empty, np.zeros(0, np.float32))
    np.testing.assert_array_equal(labels, first)
    np.testing.assert_allclose(sure, [0.9])


def test_the_second_pass_is_for_shrunk_images_and_never_finer_than_their_pixels():
    assert small_pass_scale(SHRUNK, 2.5) == 1.0
    assert small_pass_scale(0.2, 2.5) == 0.5
    assert small_pass_scale(0.125, 4.0) == 0.5
    assert small_pass_scale(0.41, 2.5) is None and small_pass_scale(1.0, 2.5) is None
    assert small_pass_scale(0.2, 0.0) is None


@pytest.mark.parametrize("value", [-1, 0.5, 1.0, 9.0])
def test_a_bad_small_pass_factor_is_refused(value):
    with pytest.raises(BadDataError, match=r"predict\.small_pass: is .*expected 0 \(no second pass\)"):
        Config.from_dict({"predict": {"small_pass": value}})


def large_and_micro_nuclei(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Nine nuclei 57 px across and eight of 9 px between them, as micronuclei beside large nuclei."""
    rng = np.random.default_rng(seed)
    side = 400
    yy, xx = np.mgrid[:side, :side]
    truth = np.zeros((side, side), np.int32)
    centres = [(r, c, 28) for r in (70, 200, 330) for c in (70, 200, 330)]
    centres += [(r, c, 4) for r in (135, 265) for c in (20, 135, 265, 380)]
    for label, (r, c, radius) in enumerate(centres, start=1):
        truth[(yy - r) ** 2 + (xx - c) ** 2 <= radius**2] = label
    grain = ndimage.gaussian_filter(rng.normal(size=truth.shape), 3)
    image = np.where(truth > 0, 0.6, 0.05) * (1 + 2 * grain / grain.std() * 0.1)
    image = ndimage.gaussian_filter(np.clip(image, 0, 1), 1) + rng.normal(0, 0.01, truth.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), truth


def _with_small_pass(config, factor: float):
    return dataclasses.replace(config, predict=dataclasses.replace(config.predict, small_pass=factor))


def test_the_shipped_model_finds_micronuclei_beside_large_nuclei(monkeypatch):
    """One scale for the image shrinks it for the large nuclei, and the micronuclei with it below
    what the watershed keeps; the finer pass finds them, and nothing else."""
    model = dsb.load_model()
    image, truth = large_and_micro_nuclei()
    found = {}
    for factor in (0.0, 2.5):
        nuclei = predict_nuclei(model.network, _with_small_pass(model.config, factor), image)
        assert nuclei.scale <= SHRUNK  # read as large nuclei, and shrunk
        score = image_score(truth, nuclei.labels)
        found[factor] = (score.tp[0], score.n_pred)
        assert len(nuclei.confidence) == nuclei.labels.max()
    assert found[0.0] == (9, 9)  # the large ones only
    assert found[2.5] == (17, 17)  # every one, and no more

    # So has the path of images so large at the working scale that they are done in chunks.
    monkeypatch.setattr(predict_module, "_CHUNK", 64)
    monkeypatch.setattr(predict_module, "_CHUNK_MARGIN", 32)
    chunked = predict_nuclei(model.network, model.config, image)
    score = image_score(truth, chunked.labels)
    assert (score.tp[0], score.n_pred) == (17, 17) and len(chunked.confidence) == 17

    # The block-wise path has the pass too: four fields side by side, in blocks of one field.
    image, truth = np.tile(image, (2, 2)), ndimage.label(np.tile(truth, (2, 2)) > 0)[0]
    blocks = np.asarray(dsb.segment_blocks(image, block_size=400))
    score = image_score(truth, blocks)
    assert (score.tp[0], score.n_pred) == (4 * 17, 4 * 17)


def test_an_image_not_shrunk_gets_no_second_pass(monkeypatch):
    from dsb.io.synthetic import nuclei_field

    model = dsb.load_model()
    image, truth = nuclei_field((192, 192), 16, seed=1)
    scales = []
    real = predict_module.predict_at_scale

    def recording(net, gray, scale, config, **kwargs):
        scales.append(scale)
        return real(net, gray, scale, config, **kwargs)

    monkeypatch.setattr(predict_module, "predict_at_scale", recording)
    nuclei = predict_nuclei(model.network, model.config, image, tta=True)
    assert nuclei.scale > SHRUNK and scales == [nuclei.scale]  # the prediction's own pass, no other
    assert image_score(truth, nuclei.labels).tp[0] >= 0.9 * truth.max()
