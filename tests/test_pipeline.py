"""The pipeline runs through DVC itself, on a throwaway copy of the repository with tiny params."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from melanoma.io import read_csv
from tests.conftest import ROOT
from tests.tiny import tiny_params

pytestmark = pytest.mark.slow


ENV = {
    "DVC_NO_ANALYTICS": "1",
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **ENV}


def sh(repo: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=repo, env=env(), capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def set_params(repo: Path, **sections) -> None:
    p = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted, value in sections.items():
        node = p
        *parents, leaf = dotted.split("__")
        for k in parents:
            node = node[k]
        node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def make_repo(dst: Path) -> Path:
    """The tracked files of this checkout, as a fresh git repo, with tiny demo params."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    (dst / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    (dst / "dvc.lock").unlink()  # from nothing: the checkout's lock describes the demo's outputs
    sh(dst, "git", "init", "-q")
    sh(dst, "git", "add", "-A")
    sh(dst, "git", "commit", "-qm", "copy")
    return dst


@pytest.fixture
def repo(tmp_path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """A second tiny repo whose `dvc repro` from nothing runs in the background, beside `built`'s, with its stages
    warm-started (`python -m melanoma.startup dvc repro`, as `./run.sh repro` runs it) where `built`'s start cold:
    the determinism test compares the two. Run side by side, they take about the time of one (each stage is
    mostly single-threaded Python start-up; the tiny params give torch one thread), and share nothing."""
    repo = make_repo(tmp_path_factory.mktemp("twin") / "repo")
    log = (repo.parent / "repro.log").open("w")
    cmd = [sys.executable, "-m", "melanoma.startup", "dvc", "repro"]
    p = subprocess.Popen(cmd, cwd=repo, env=env(), stdout=log, stderr=subprocess.STDOUT)
    yield repo, p
    if p.poll() is None:
        p.kill()
    p.wait()
    log.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory, twin) -> tuple[Path, str]:
    """One tiny repo after a full `dvc repro` from nothing (and that run's output), shared by the tests that
    only read it or work on a copy of it."""
    repo = make_repo(tmp_path_factory.mktemp("built") / "repo")
    return repo, sh(repo, "dvc", "repro").stdout


def copy_of(built: tuple[Path, str], dst: Path) -> Path:
    """A copy of the built repo (workspace, git, DVC cache, checkpoints) to change without touching the others."""
    shutil.copytree(built[0], dst, symlinks=True)
    return dst


def reseed_then_retrain_one_arch(repo: Path) -> dict[str, str]:
    """A new demo seed, then one arch's params, then a smaller grid, on one built repo: each `dvc repro`'s output."""
    set_params(repo, data__demo__seed=1)  # new data: every stage reruns
    runs = {"seed": sh(repo, "dvc", "repro").stdout}
    set_params(repo, classifiers__models__ResNet__lr=0.003)  # one arch's params: only that arch's cells
    runs["ResNet lr"] = sh(repo, "dvc", "repro").stdout
    set_params(repo, classifiers__archs=["ViT"])  # the grid shrinks with the list in params
    runs["archs"] = sh(repo, "dvc", "repro").stdout
    return runs


@pytest.fixture(scope="module")
def reseeded(built, tmp_path_factory):
    """A copy of `built` taken through reseed_then_retrain_one_arch in a thread, beside the tests that follow (the
    first test starts it, the last checks it): like the twin, a third full run costs little wall time that way."""
    repo = copy_of(built, tmp_path_factory.mktemp("reseeded") / "repo")
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield repo, pool.submit(reseed_then_retrain_one_arch, repo)


def ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", out))


def lock_outs(repo: Path) -> dict[str, str]:
    """Every output path in dvc.lock -> its md5: what DVC has committed."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {o["path"]: o["md5"] for st in lock.values() for o in st.get("outs", [])}


@pytest.mark.usefixtures("reseeded")  # started now, to run beside every test of this module
def test_repro_builds_outputs_then_has_nothing_to_do(built, tmp_path):
    repo, first = built
    stages = set(sh(repo, "dvc", "stage", "list", "--name-only").stdout.split())
    assert ran(first) == stages and len(stages) == 26  # every stage of the tiny grid ran, once
    assert not [p for p in lock_outs(repo) if not (repo / p).exists()]  # every declared output exists
    for cell in ("ResNet/ResNet_Original", "ResNet/ResNet_DCGAN", "ViT/ViT_Original", "ViT/ViT_DCGAN"):
        for seed in (0, 1):
            cfg = json.loads((repo / "models/classifiers" / cell / f"seed_{seed}/model_config.json").read_text())
            assert 0 <= cfg["val_auroc"] <= 1 and cfg["steps_run"] == 8 and cfg["seed"] == seed
    assert (repo / "results/report.html").is_file() and (repo / "results/grid.csv").is_file()
    rows = read_csv(repo / "data/raw/manifest.csv")
    assert Counter(r["label"] for r in rows) == {"benign": 24, "malignant": 12}
    assert all((repo / "data/raw" / r["path"]).is_file() for r in rows)
    ids = [r["id"] for s in ("train", "val", "test") for r in read_csv(repo / f"data/splits/{s}.csv")]
    assert sorted(ids) == sorted(r["id"] for r in rows)
    # the packaged cells are what users run: predict on real files, and the Hub folders with their cards
    test = read_csv(repo / "data/splits/test.csv")  # predict on the test files reproduces evaluate's predictions
    out = sh(
        repo,
        sys.executable,
        "-m",
        "melanoma.commands",
        "predict",
        *(f"data/raw/{r['path']}" for r in test),
        "--json",
        "--model",
        "models/export/ViT/ViT_Original",
    ).stdout
    packaged = json.loads((repo / "results/evaluation/ViT/ViT_Original/metrics.json").read_text())["seed"]
    evaluated = read_csv(repo / f"results/evaluation/ViT/ViT_Original/seed_{packaged}/predictions_test.csv")
    got = json.loads(out)["predictions"]
    assert [Path(r["path"]).stem for r in got] == [r["id"] for r in evaluated]
    assert all(
        abs(g["p_malignant"] - float(e["p_malignant"])) < 1e-6 and g["decision"] == e["predicted"]
        for g, e in zip(got, evaluated)
    )
    out = sh(repo, sys.executable, "-m", "melanoma.commands", "publish", "--dry-run", "--out", str(tmp_path)).stdout
    assert out.count("would upload") == 4
    for cell in ("ResNet_Original", "ResNet_DCGAN", "ViT_Original", "ViT_DCGAN"):
        auroc = json.loads((repo / "models/export" / cell.split("_")[0] / cell / "model_config.json").read_text())[
            "evaluation"
        ]["test"]["auroc"]
        assert f"| AUROC | {auroc:.3f} |" in (tmp_path / cell / "README.md").read_text()
    second = sh(repo, "dvc", "repro")
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date" in second.stdout
    assert "up to date" in sh(repo, "dvc", "status").stdout


def test_param_changes_rerun_only_what_depends_on_them(built, tmp_path):
    repo = copy_of(built, tmp_path / "repo")
    tiny = (repo / "params.yaml").read_text()
    # which stages a param reaches is what dvc.yaml declares: `dvc status` lists the stages whose own deps changed
    set_params(repo, generators__ddpm__lr=0.002)  # one generator family's params: only its training
    assert set(json.loads(sh(repo, "dvc", "status", "--json").stdout)) == {
        "train_generator@ddpm-benign",
        "train_generator@ddpm-malignant",
    }
    (repo / "params.yaml").write_text(tiny)
    # evaluate@<arch> reads data/datasets as a whole, so a rebuilt dataset outside this tiny grid (*_Upscaled)
    # reruns it too, to the same results: the grid's cells are not retrained and their evaluation does not change
    evaluated = {p: h for p, h in lock_outs(repo).items() if p.startswith("results/evaluation/")}
    set_params(repo, upscale__method="bicubic")  # the upscaler stays; only the upscaled sets are remade
    assert set(json.loads(sh(repo, "dvc", "status", "--json").stdout)) == {"upscale@dcgan", "upscale@ddpm"}
    out = sh(repo, "dvc", "repro").stdout
    assert ran(out) == {
        "upscale@dcgan",
        "upscale@ddpm",
        "build_dataset@DCGAN_Upscaled",
        "build_dataset@DDPM_Upscaled",
        "evaluate@ResNet",
        "evaluate@ViT",
        "export",
        "report",
    }
    assert {p: h for p, h in lock_outs(repo).items() if p.startswith("results/evaluation/")} == evaluated
    set_params(repo, split__seed=7)
    out = sh(repo, "dvc", "repro", "split").stdout
    assert ran(out) == {"split"}
    # evaluation params (no retraining): test_experiments_show_and_metrics_diff, through `dvc exp run -S`;
    # a new demo seed and one arch's params: test_a_new_seed_reruns_everything_one_arch_only_its_cells


def test_experiments_show_and_metrics_diff(built, tmp_path):
    repo = copy_of(built, tmp_path / "repo")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "built")
    out = sh(repo, "dvc", "exp", "run", "-n", "sens90", "-S", "evaluate.threshold=sensitivity").stdout
    assert not re.findall(r"Running stage 'train_classifier", out) and "Running stage 'evaluate@ResNet'" in out
    assert "Running stage 'export'" in out  # packages carry the threshold
    table = sh(repo, "dvc", "exp", "show", "--md").stdout
    assert "sens90" in table and "evaluate.threshold" in table and "sensitivity" in table
    diff = sh(repo, "dvc", "metrics", "diff").stdout  # HEAD (Youden) vs the workspace (the experiment)
    changed = set(re.findall(r"results/cells/(\w+_\w+)\.json\s+sensitivity", diff))  # one row per cell and metric
    shown = sh(repo, "dvc", "metrics", "show").stdout  # a table: one row per cell and per pooled dataset
    assert {f"results/cells/{c}.json" for c in ("ResNet_Original", "ViT_DCGAN", "Baseline_Original")} | {
        "results/pooled/DCGAN.json"
    } <= {line.split()[0] for line in shown.splitlines()[1:]}
    assert "results/subgroups" not in shown  # its own target, not the default table
    for recipe in (
        [
            "dvc",
            "exp",
            "show",
            "--no-pager",
            "--drop",
            ".*",
            "--keep",
            "Experiment|evaluate.threshold|results/pooled/DCGAN.json:verdict",
        ],  # the recipes of docs/dvc.md
        ["dvc", "exp", "diff", "HEAD", "sens90"],
        ["dvc", "metrics", "show", "results/subgroups"],  # a row per augmented dataset and attribute
    ):
        p = subprocess.run(recipe, cwd=repo, env={**env(), "COLUMNS": "120"}, capture_output=True, text=True)
        assert p.returncode == 0 and max(map(len, p.stdout.splitlines())) <= 120 and "…" not in p.stdout, p.stdout
    assert changed and changed <= {"ResNet_Original", "ResNet_DCGAN", "ViT_Original", "ViT_DCGAN", "Baseline_Original"}
    bad = sh(repo, "dvc", "exp", "run", "-S", "data.source=dmeo", check=False)  # the schema guards -S
    assert bad.returncode != 0 and "Traceback" not in bad.stdout + bad.stderr
    assert "data.source must be one of demo, local, isic_csv, gdrive (got 'dmeo')" in bad.stdout + bad.stderr


def test_push_then_a_fresh_clone_pulls_everything_and_the_run_cache_restores(built, tmp_path):
    repo = copy_of(built, tmp_path / "repo")
    sh(repo, "dvc", "remote", "add", "-d", "store", str(tmp_path / "remote"))  # a local directory remote
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "built")
    sh(repo, "dvc", "push", "--run-cache")
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "models/classifiers").exists()
    sh(clone, "dvc", "pull", "--run-cache")
    assert lock_outs(clone) == lock_outs(repo)
    assert not [p for p in lock_outs(clone) if not (clone / p).exists()]
    assert "up to date" in sh(clone, "dvc", "status").stdout
    assert "Running stage" not in sh(clone, "dvc", "repro").stdout
    # an output deleted by hand comes back from the run-cache: no retraining (the clone has no checkpoints)
    cell = "models/classifiers/ViT/ViT_Original"
    before = (clone / cell / "seed_0/model_config.json").read_text()
    shutil.rmtree(clone / cell)
    out = sh(clone, "dvc", "repro").stdout
    assert "Running stage" not in out and "train_classifier@ViT-Original" in out, out
    assert (clone / cell / "seed_0/model_config.json").read_text() == before
    assert "up to date" in sh(clone, "dvc", "status").stdout


def readme_share_commands() -> list[str]:
    """The `$ ` lines of the first code block under "## Share" in docs/dvc.md."""
    text = (ROOT / "docs" / "dvc.md").read_text()
    block = text[text.index("## Share:") :].split("```text\n", 1)[1].split("```", 1)[0]
    return [line[2:] for line in block.splitlines() if line.startswith("$ ")]


def test_the_docs_share_sequence_works_verbatim(built, tmp_path):
    repo = copy_of(built, tmp_path / "repo")  # a fresh run: its dvc.lock is not the committed one (none here)
    assert sh(repo, "git", "status", "--porcelain", "dvc.lock").stdout.strip()
    commands = readme_share_commands()
    assert any(c.startswith("git add dvc.lock") for c in commands) and "dvc pull -r demo" in commands
    script = "set -euo pipefail\n" + "\n".join(c.replace("/tmp/", f"{tmp_path}/") for c in commands)
    p = subprocess.run(["bash", "-c", script], cwd=repo, env=env(), capture_output=True, text=True)
    said = p.stdout + p.stderr
    assert p.returncode == 0, said
    assert "Missing cache" not in said and "Running stage" not in said and "Data and pipelines are up to date." in said
    clone = tmp_path / "fresh-clone"
    assert lock_outs(clone) == lock_outs(repo) and not [o for o in lock_outs(clone) if not (clone / o).exists()]


def test_two_fresh_runs_give_identical_results(built, twin):
    repo, p = twin
    assert p.wait() == 0, (repo.parent / "repro.log").read_text()[-3000:]
    log = (repo.parent / "repro.log").read_text()
    assert ran(log) == ran(built[1])  # it ran every stage too
    assert "warm start: " in log and "starting cold" not in log  # every stage in a fork of the warm server
    a, b = lock_outs(built[0]), lock_outs(repo)
    # every output byte for byte: raw data, splits, synthetic images (plain and upscaled), datasets, generator,
    # upscaler and classifier folders (every seed), evaluations (GradCAM images included), the baseline,
    # packages (ONNX included), report, verdict, subgroups
    assert len(a) == 40 and len([p for p in a if p.startswith("data/")]) == 12
    assert a == b  # metrics.json included (a `cache: false` output, hashed in dvc.lock like the others)


def test_a_killed_stage_never_leaves_a_partial_output(built, tmp_path):
    """SIGKILL `dvc repro` (and its stage) while synthesize / build_dataset write: nothing partial is committed."""
    repo = copy_of(built, tmp_path / "repo")
    committed = lock_outs(repo)
    for stage, out in (("synthesize@dcgan", "data/synthetic/dcgan"), ("build_dataset@DCGAN", "data/datasets/DCGAN")):
        parent, name = (repo / out).parent, Path(out).name
        for _attempt in range(30):  # build_dataset writes for a few ms only: retry until the kill lands mid-write
            p = subprocess.Popen(
                ["dvc", "repro", "-f", "-s", stage],
                cwd=repo,
                env=env(),
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 120
            while p.poll() is None and time.monotonic() < deadline and not list(parent.glob(f".{name}.tmp-[0-9]*")):
                time.sleep(0.001)
            writing = p.poll() is None
            if writing:
                os.killpg(p.pid, signal.SIGKILL)  # the moment the stage starts writing its output
            p.wait()
            # mid-write: the kill landed before the rename, so the temp folder is still there (a kill that lands
            # just after the rename leaves a whole output, which proves nothing here: try again)
            writing = writing and bool(list(parent.glob(f".{name}.tmp-[0-9]*")))
            if writing:
                break
        assert writing, f"{stage} always finished before it could be killed while writing"
        assert lock_outs(repo) == committed  # DVC committed nothing new
        leftover = repo / out  # DVC removed it before running the stage; the stage never wrote it half
        assert not leftover.exists() or "up to date" in sh(repo, "dvc", "status", stage).stdout
        again = sh(repo, "dvc", "repro").stdout
        assert f"Running stage '{stage}'" in again or "is cached" in again
        assert ran(again) <= {stage}  # the hidden temp folder is .dvcignored: the evaluations reading
        # data/datasets as a whole do not rerun because of it
        assert lock_outs(repo) == committed  # the rerun completes, to the same bytes
        assert "up to date" in sh(repo, "dvc", "status").stdout
        # the killed run's hidden temp folder (never an output) goes the next time the stage itself runs; a
        # rerun restored from the run-cache does not run it
        sh(repo, "dvc", "repro", "-f", "-s", stage)
        assert not list(parent.glob(f".{name}.*")) and lock_outs(repo) == committed


def test_study_dry_plans_the_full_grid_on_a_fresh_clone(repo):
    """`./run.sh study --dry`, the documented first step, on a fresh clone (no data/raw yet): rc 0, the grid,
    images per dataset, the stages to run, GPU time and disk; nothing runs."""
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")  # the committed demo profile, not the tiny one
    venv = Path(sys.executable).parent.parent  # this venv: setup finds its stamp current and installs nothing
    p = subprocess.run(
        ["bash", "run.sh", "study", "--dry"],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**env(), "VENV": str(venv), "PYTHON": sys.executable},
    )
    assert p.returncode == 0, p.stdout + p.stderr
    plan = p.stdout
    assert "profile in effect: study; device: cuda (refuses to start without a usable GPU)" in plan
    assert "grid: 6 archs x 5 datasets x 5 seeds = 150 trainings" in plan, plan
    assert re.search(
        r"^stages to run \(dvc status\): 56 of 56: fetch, split, train_generator x4, .*"
        r"train_classifier x30, evaluate x6",
        plan,
        re.M,
    ), plan
    assert re.search(r"GPU time \d+\.\d h", plan) and re.search(
        r"disk of outputs: final \d+\.\d GB, peak \d+\.\d GB", plan
    ), plan
    for name in ("DCGAN", "DCGAN_Upscaled", "DDPM", "DDPM_Upscaled"):  # ~6,570 training images per augmented
        assert re.search(
            rf"^{name} +6,570 +3,285 = 730 \+ 2,555 \(78%\) +3,285 = 370 \+ 2,915 \(89%\) +83% +20$", plan, re.M
        ), plan
    assert "real train images ASSUMED" in plan and "2,054 optimiser steps per cell and seed" in plan
    assert not (repo / "data/raw").exists() and not (repo / "models/classifiers").exists()
    p = yaml.safe_load((repo / "params.yaml").read_text())
    assert p["datasets"]["image_size"] == 224 and p["classifiers"]["models"]["ResNet"]["model"] == "resnet50"


@pytest.mark.parametrize(
    "layout,expected", [("folder", {"benign": 150, "malignant": 150}), ("archive", {"benign": 14, "malignant": 10})]
)
def test_fetch_local_shared_sample_through_dvc(repo, isic_sample, layout, expected):
    set_params(repo, data__source="local", data__local__path=str(isic_sample / layout))
    sh(repo, "dvc", "repro", "-s", "fetch")
    rows = read_csv(repo / "data/raw/manifest.csv")
    assert Counter(r["label"] for r in rows) == expected
    assert read_csv(repo / "data/raw/rejected.csv") == []


def test_a_new_seed_reruns_everything_one_arch_only_its_cells(built, reseeded):
    repo, runs = reseeded
    runs = runs.result()
    assert ran(runs["seed"]) == ran(built[1])  # every stage
    a, b = lock_outs(built[0]), lock_outs(repo)
    assert [p for p in a if p.startswith("data/") and a[p] == b[p]] == []  # and every data output is new
    assert ran(runs["ResNet lr"]) == {
        "train_classifier@ResNet-Original",
        "train_classifier@ResNet-DCGAN",
        "evaluate@ResNet",
        "export",
        "report",
    }
    cells = sh(repo, "dvc", "stage", "list").stdout
    assert "train_classifier@ViT-Original" in cells and "train_classifier@ResNet" not in cells
    assert ran(runs["archs"]) == {"export", "report"}
    assert set(json.loads((repo / "results/metrics.json").read_text())) == {"ViT_Original", "ViT_DCGAN"}


def test_own_data_stops_before_training_when_nothing_is_added_else_completes(repo, isic_sample, tmp_path):
    own = tmp_path / "own"  # a balanced folder of real ISIC images, as a researcher's own data
    for label in ("benign", "malignant"):
        (own / label).mkdir(parents=True)
        for f in sorted((isic_sample / "folder" / label).iterdir())[:20]:
            shutil.copy(f, own / label / f.name)
    local = ["-S", "data.source=local", "-S", f"data.local.path={own}"]
    bad = sh(repo, "dvc", "exp", "run", *local, "-S", "datasets.per_class=1x", check=False)
    said = bad.stdout + bad.stderr
    assert bad.returncode != 0 and "Traceback" not in said
    assert re.search(
        r"datasets\.per_class: 1x adds no synthetic image to (\d+) benign \+ \1 malignant real train "
        r"images, so every augmented dataset would equal Original; set a multiple of the larger class, "
        r"e\.g\. `dvc exp run -S datasets\.per_class=2x`",
        said,
    ), said
    assert "train_generator" not in said and not list((repo / "models").glob("generators/*/*"))  # stopped at split
    sh(repo, "git", "checkout", "params.yaml")  # what the README says to do after a failed run
    out = sh(repo, "dvc", "exp", "run", *local).stdout  # own data through -S alone (the tiny params' budget)
    assert "Running stage 'report'" in out
    assert Counter(r["label"] for r in read_csv(repo / "data/raw/manifest.csv")) == {"benign": 20, "malignant": 20}
    assert json.loads((repo / "results/verdict.json").read_text())["pooled"]["DCGAN"]["test"]["verdict"] in (-1, 0, 1)
    assert "<h3>Source: demo" not in (repo / "results/report.html").read_text()


def test_the_own_data_profile_on_the_isic_sample_plans_a_majority_synthetic_augmentation(repo, isic_sample):
    """The own-data commands of docs/data.md (images in data/local, `melanoma profile own-data`, `dvc repro split`,
    `melanoma plan`) on the 300-image ISIC sample: augmented sets sized to the data, share and passes stated."""
    shutil.copytree(isic_sample / "folder", repo / "data/local")
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")  # the committed demo params, as a clone has them
    said = sh(repo, "melanoma", "profile", "own-data").stdout
    assert "profile 'own-data' in effect" in said
    split = sh(repo, "dvc", "repro", "split").stdout
    line = re.search(
        r"augmented sets: datasets.per_class 3x = (\d+) images per class .*: ([\d,]+) of ([\d,]+) "
        r"synthetic \((\d+)%\); training: (\d+) optimiser steps of 32 \(steps: auto, 2 passes\)",
        split,
    )
    assert line, split
    real = read_csv(repo / "data/splits/train.csv")
    assert int(line[1]) == 3 * max(Counter(r["label"] for r in real).values())
    assert int(line[4]) >= 50 and int(line[5]) >= 2 * 3 * len(real) // 32  # synthetic the majority; 2 passes
    plan = sh(repo, "melanoma", "plan").stdout
    assert "profile in effect: own-data" in plan and "\n!" not in plan, plan
    rows = {
        r.split()[0]: r.split()
        for r in plan.splitlines()
        if r.split() and r.split()[0] in ("Original", "DCGAN", "DDPM_Upscaled")
    }
    assert rows["Original"][-2:] == ["0%", rows["Original"][-1]] and float(rows["Original"][-1]) > 5  # passes
    assert rows["DCGAN"][-2] == f"{line[4]}%" and rows["DCGAN"][-1] == "2.0"
    bad = sh(repo, "dvc", "exp", "run", "-S", "datasets.per_class=1.1x", check=False)
    assert bad.returncode != 0 and "below datasets.min_synthetic_share 0.25" in bad.stdout + bad.stderr


def test_after_a_run_the_relink_stores_each_package_weight_once(built, tmp_path):
    """DVC leaves a package's weights (a byte copy of its seed's cached file) as a second copy; ./run.sh repro
    ends with `dvc checkout --relink`, which makes both paths one file."""
    assert 'dvc repro "$@"; if [ $# -eq 0 ]; then dvc checkout --relink -q; fi' in (ROOT / "run.sh").read_text()
    repo = copy_of(built, tmp_path / "repo")
    pkg = next((repo / "models/export").glob("*/*/model.safetensors"))
    seeds = list((repo / "models/classifiers").glob(f"*/{pkg.parent.name}/seed_*/model.safetensors"))
    assert not any(os.path.samefile(pkg, s) for s in seeds)  # as the stage left it
    sh(repo, "dvc", "checkout", "--relink", "-q")
    assert any(os.path.samefile(pkg, s) for s in seeds) and "up to date" in sh(repo, "dvc", "status").stdout
