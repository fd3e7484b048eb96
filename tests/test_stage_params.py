"""A stage's library call receives only the params its dvc.yaml stage declares (melanoma.stage.stage_params):
reading any other key fails at once, so a stage cannot come to depend on a key DVC does not rerun it for."""

from __future__ import annotations

import json

import pytest

from melanoma.evaluation.report import source_name
from melanoma.imports import ROOT
from melanoma.params import load_params
from melanoma.stage import UndeclaredParam, declared, declared_keys

PARAMS = load_params(ROOT / "params.yaml")


def test_only_declared_keys_are_there_and_any_other_read_names_the_key_and_the_stage() -> None:
    p = declared(PARAMS, ["split", "datasets.per_class", "classifiers.train.steps"], "split")
    assert p["split"] == PARAMS["split"] and type(p["split"]) is dict  # a whole section: a plain dict
    assert p["datasets"]["per_class"] == PARAMS["datasets"]["per_class"]
    assert p["classifiers"]["train"]["steps"] == PARAMS["classifiers"]["train"]["steps"]
    assert json.loads(json.dumps(p)) == {
        "split": PARAMS["split"],
        "datasets": {"per_class": PARAMS["datasets"]["per_class"]},
        "classifiers": {"train": {"steps": PARAMS["classifiers"]["train"]["steps"]}},
    }
    with pytest.raises(
        UndeclaredParam, match=r"stage split reads params key 'datasets.image_size'.*add `- datasets.image_size`"
    ):
        p["datasets"]["image_size"]
    with pytest.raises(UndeclaredParam, match="'classifiers.train.batch_size'"):
        p["classifiers"]["train"].get("batch_size", 32)
    with pytest.raises(UndeclaredParam, match="'device'"):
        "device" in p  # noqa: B015  (a membership test is a read too)
    p["split"]["seed"] = 99  # a copy: the library cannot change the params another call sees
    assert PARAMS["split"]["seed"] != 99


def test_dvc_yaml_templates_are_filled_from_the_stage_arguments() -> None:
    keys = declared_keys("train_generator", ROOT / "dvc.yaml", item={"gen": "ddpm", "cls": "benign"})
    assert "generators.ddpm" in keys and "device" in keys and not any("${" in k for k in keys)
    assert "classifiers.models.Swin" in declared_keys(
        "train_classifier", ROOT / "dvc.yaml", item={"arch": "Swin", "dataset": "DDPM"}
    )


def test_removing_a_declared_key_makes_the_library_read_fail() -> None:
    """The report names its data source from `data`: with `data` taken out of its dvc.yaml params, the read fails
    naming the key (the pipeline tests run every stage under its real declaration)."""
    keys = declared_keys("report", ROOT / "dvc.yaml")
    assert "data" in keys
    assert "embedded simulator" in source_name(declared(PARAMS, keys, "report"), {})
    fewer = [k for k in keys if k != "data"] + ["data.source"]
    with pytest.raises(UndeclaredParam, match="stage report reads params key 'data.local'"):
        source_name(declared(PARAMS, fewer, "report"), {})
