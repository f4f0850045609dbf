"""Config: strict JSON, shipped configs, round trip."""

from __future__ import annotations

import json

import pytest

from dsb.core.config import Config, load_config, save_config, shipped_config
from dsb.core.errors import BadDataError


def test_round_trip(tmp_path):
    config = Config().replace(validation_ids=("a", "b"))
    path = save_config(config, tmp_path / "config.json")
    assert load_config(path) == config


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_shipped_configs_load(name):
    config = shipped_config(name)
    assert config.model.outputs[:2] == ("body", "border")


def test_gpu_config_is_larger():
    assert shipped_config("gpu").model.level_filters()[0] > shipped_config("cpu").model.level_filters()[0]


def test_partial_config_takes_defaults(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {"epochs": 3}}))
    config = load_config(path)
    assert config.train.epochs == 3
    assert config.model == Config().model


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"train": {"epochz": 3}}, "key 'train.epochz': unknown key"),
        ({"modle": {}}, "key 'modle': unknown key"),
        ({"train": {"epochs": "many"}}, "key 'train.epochs': is 'many' (str), expected int"),
        ({"train": {"epochs": True}}, "key 'train.epochs'"),
        ({"model": {"filters": [8, "x"]}}, "key 'model.filters[1]'"),
        ({"model": 3}, "key 'model': is int, expected an object"),
        ({"postprocess": {"flood": "lake"}}, "postprocess.flood: is 'lake'"),
        ({"model": {"depth": 3, "dropout": [0.1, 0.2]}}, "model.dropout: has 2 rates for 3 levels"),
        ({"train": {"learning_rate": 0}}, "train.learning_rate: is 0.0, expected > 0"),
        ({"train": {"split": "groups"}}, "train.split: is 'groups', expected 'group' or 'random'"),
        ({"predict": {"batch_size": 0}}, "predict.batch_size: is 0, expected at least 1"),
        ({"model": {"depth": 6, "dropout": [0.0]}, "predict": {"tile_size": 48, "overlap": 8}},
         "predict.tile_size: is 48, expected a multiple of 32 for a U-Net of 6 levels"),
        ({"model": {"filters": [8, 0], "dropout": [0.0]}}, "model.filters: are [8, 0], expected positive filters"),
        ({"model": {"outputs": ["body", "border", "core"]}},
         "model.outputs: is ['body', 'border', 'core'], expected ['body', 'border'] or ['body', 'border', 'contact']"
         " or ['body', 'border', 'contact', 'core']"),
        ({"postprocess": {"core_threshold": 1.5}}, "postprocess.core_threshold: is 1.5, expected in [0, 1]"),
    ],
)
def test_bad_configs_name_the_file_and_key(tmp_path, data, needle):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BadDataError) as info:
        load_config(path)
    assert needle in str(info.value)
    assert str(info.value).startswith(f"{path}: ")


def test_not_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{model: ")
    with pytest.raises(BadDataError, match="not valid JSON"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(BadDataError, match="config file not found"):
        load_config(tmp_path / "nope.json")


def test_not_utf8(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"model": "\xff"}')
    with pytest.raises(BadDataError, match="not UTF-8"):
        load_config(path)


@pytest.mark.parametrize("key", ["activation", "initializer"])
def test_unknown_keras_names_are_bad_data(key):
    from dsb.core.config import ModelConfig
    from dsb.network.unet import build_unet

    with pytest.raises(BadDataError, match=f"model.{key}: is 'relux', which Keras does not know"):
        build_unet(ModelConfig(depth=2, base_filters=4, dropout=(0.0,), **{key: "relux"}))
