"""Files that restate a fact kept elsewhere are generated (tools/generate.py) and must equal what it writes now:
dvc.yaml's code deps and plots, the parameters reference and the CLI reference."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from melanoma.imports import ROOT
from melanoma.params import SCHEMA

spec = importlib.util.spec_from_file_location("generate", ROOT / "tools" / "generate.py")
generate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generate)


@pytest.mark.parametrize("path", ["dvc.yaml", "docs/reference/params.md", "docs/reference/cli.md"])
def test_generated_files_are_fresh(path: str) -> None:
    want = generate.targets()[ROOT / path]
    assert (ROOT / path).read_text() == want, f"{path} is stale: run `python tools/generate.py` and commit it"


def test_a_removed_code_dep_is_put_back_and_a_hand_added_one_removed() -> None:
    text = (ROOT / "dvc.yaml").read_text()
    dropped = text.replace("      - melanoma/evaluation/gradcam.py\n", "", 1)
    added = text.replace(
        "      - stages/fetch.py\n", "      - stages/fetch.py\n      - melanoma/evaluation/report.py\n", 1
    )
    assert dropped != text and added != text
    assert generate.with_code_deps(dropped) == text and generate.with_code_deps(added) == text


def test_plots_cover_every_cell_of_the_grid() -> None:
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    files = {f for p in plots for spec in p.values() if isinstance(spec, dict) for f in spec.get("y", {})}
    for arch in generate.ARCHS:
        for d in generate.DATASET_NAMES:
            assert f"results/evaluation/{arch}/{arch}_{d}/roc_test.csv" in files
            assert f"models/classifiers/{arch}/{arch}_{d}/seed_0/live/plots/metrics/val_auroc.tsv" in files


def test_params_page_has_every_key_with_its_range_and_meaning() -> None:
    page = (ROOT / "docs/reference/params.md").read_text()
    keys = [k for k, _ in generate.leaves(SCHEMA)]
    assert len(keys) > 80 and all(f"| `{k}` |" in page for k in keys)
    row = next(line for line in page.splitlines() if line.startswith("| `split.val_fraction` |"))
    assert "float in [0" in row and "`0.15`" in row
    row = next(line for line in page.splitlines() if line.startswith("| `generators.dcgan.lr_floor` |"))
    assert "cosine schedule ends at this fraction of lr" in row


def test_cli_page_has_every_command_and_option() -> None:
    page = (ROOT / "docs/reference/cli.md").read_text()
    for name in ("predict", "calibrate", "publish", "download", "profile", "plan", "weights"):
        assert f"## `melanoma {name}`" in page
    for option in ("--threshold-file", "--gradcam", "--labels", "--target-sensitivity", "--version"):
        assert option in page


def test_comments_are_read_per_key() -> None:
    text = "a:            # the a section\n  b: 1        # one\n              # and more\n  c: [1, 2]\nd: x\n"
    assert generate.yaml_comments(text) == {"a": "the a section", "a.b": "one and more"}
