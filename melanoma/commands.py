"""The `melanoma` console command: predict, calibrate, publish, download, profile, plan, weights (installed by
`pip install .`, or `pip install -e .` in a checkout)."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from pathlib import Path

from melanoma.errors import INTERRUPTED, MelanomaError, os_error_line, printable
from melanoma.params import ParamsError


def _say(text: str) -> None:
    """Print a command's (possibly multi-line) output with control characters in names escaped."""
    print(printable(text, keep_newlines=True))


def _line(text: str) -> None:
    """Print one line of output, every control character in it (a name's newline included) escaped."""
    print(printable(text))


def _cells(args: argparse.Namespace, params: dict) -> list[str]:
    c = params["classifiers"]
    grid = [f"{a}_{d}" for a in c["archs"] for d in c["datasets"]]
    if args.all or not args.cells:
        return grid
    from melanoma.params import ARCHS, DATASET_NAMES

    known = {f"{a}_{d}" for a in ARCHS for d in DATASET_NAMES}
    bad = [x for x in args.cells if x not in known]
    if bad:
        raise ParamsError(
            f"unknown cell {bad[0]!r}; cells are <Arch>_<Dataset>, e.g. ResNet_Original "
            f"(archs {', '.join(ARCHS)}; datasets {', '.join(DATASET_NAMES)})"
        )
    return args.cells


def cmd_predict(args: argparse.Namespace) -> int:
    from melanoma.serving.hub import resolve
    from melanoma.serving.predict import as_json, as_table, expand, predict

    files = expand(args.images)
    if not files:
        raise ParamsError("no images: " + " ".join(map(str, args.images)) + " holds no image files")
    results, cfg = predict(files, resolve(args.model), args.gradcam, args.threshold_file)
    print(as_json(results, cfg, args.model) if args.json else as_table(results, cfg, args.model))
    refused = sum(r.error is not None for r in results)
    unwritten = [r.gradcam_error for r in results if r.gradcam_error]
    if unwritten:
        print(
            printable(
                f"predict: {len(unwritten)} GradCAM overlay(s) could not be written (first: {unwritten[0]}); "
                "the scores above are complete"
            ),
            file=sys.stderr,
        )
    if refused == len(results):
        print(f"predict: none of the {len(results)} files could be scored (reasons above)", file=sys.stderr)
    elif refused:
        print(
            f"predict: {refused} of {len(results)} files refused (reasons above); the other "
            f"{len(results) - refused} were scored",
            file=sys.stderr,
        )
    return 1 if refused or unwritten else 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from melanoma.serving.calibrate import calibrate, summary
    from melanoma.serving.hub import resolve

    rule = args.rule or ("sensitivity" if args.target_sensitivity is not None else "youden")
    rec, out = calibrate(
        resolve(args.package),
        args.labels,
        rule,
        args.target_sensitivity,
        args.out,
        args.bootstrap,
        args.seed,
        args.force,
    )
    _say(summary(rec, out, args.package))
    if rec["labels"]["unreadable"]:
        from melanoma.text import top_reasons

        bad = [(u["path"], u["reason"]) for u in rec["labels"]["unreadable_files"]]
        print(
            printable(
                f"calibrate: {rec['labels']['unreadable']} of {rec['labels']['unreadable'] + rec['n']} images "
                f"could not "
                f"be read and were left out ({top_reasons(bad, 3)}; listed in {out}); the threshold uses the other "
                f"{rec['n']}"
            ),
            file=sys.stderr,
        )
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from melanoma.params import load_params
    from melanoma.paths import EXPORT_DIR
    from melanoma.serving.hub import publish

    params = load_params()
    packages = {}
    for cell in _cells(args, params):
        arch = cell.split("_", 1)[0]
        packages[cell] = EXPORT_DIR / arch / cell
    publish(
        packages,
        args.repo or params["publish"]["repo"],
        args.out,
        args.dry_run,
        params["publish"]["private"],
        args.force,
        say=_line,
    )  # each line as it happens
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from melanoma.params import load_params
    from melanoma.serving.hub import download

    params = load_params()
    download(
        _cells(args, params), args.repo or params["publish"]["repo"], args.dest, args.revision, args.force, say=_line
    )  # each line as it happens
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from melanoma.profile import DEMO, apply_profile

    leftovers = "keep" if args.keep else "drop" if args.drop else "refuse"
    changed, extra = apply_profile(args.name, leftovers=leftovers)
    if extra:
        print(
            f"params.yaml: {len(extra)} value(s) no profile sets were {'kept' if args.keep else 'dropped'}: "
            + ", ".join(sorted(extra))
        )
    shown = ", ".join(changed[:6]) + (", ..." if len(changed) > 6 else "")
    back = "" if args.name == DEMO else f"; back to the demo: `melanoma profile {DEMO}`"
    print(
        f"params.yaml: profile {args.name!r} in effect ({len(changed)} values changed"
        f"{': ' + shown if changed else ''}){back}"
    )
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from melanoma.params import load_params
    from melanoma.paths import SPLITS_DIR
    from melanoma.plan import dvc_status, report

    _say(report(load_params(), SPLITS_DIR, dvc_status()))
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    if args.action == "check":  # before huggingface_hub is imported: it reads the variable once
        os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import constants

    from melanoma.params import load_params
    from melanoma.weights import check, fetch

    params = load_params()
    if args.action == "fetch":
        done = fetch(params)
        print(
            f"weights: {len(done)} pretrained weight(s) in {constants.HF_HUB_CACHE}; copy that cache to machines "
            "without network (or share HF_HOME) and run `melanoma weights check` there"
        )
        return 0
    results = check(params)
    for c in results:
        _say(
            f"{c.state.upper():<8}{c.weight} ({c.weight.key})"
            + (f" {c.path}" if c.path else "")
            + (f": {c.detail}" if c.detail else "")
        )
    bad = [c for c in results if c.state != "ok"]
    if bad:
        print(
            f"melanoma weights: error: {len(bad)} of {len(results)} pretrained weight(s) not usable offline ("
            + "; ".join(f"{c.weight}: {c.state}, or {c.weight.instead}" for c in bad)
            + "); run `melanoma weights "
            f"fetch` on a machine with network (a broken file: delete it first) and copy its Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) here",
            file=sys.stderr,
        )
        return 1
    print(
        f"weights: {len(results)} pretrained weight(s) present and loadable offline"
        if results
        else "weights: params.yaml needs no pretrained weights"
    )
    return 0


def version() -> str:
    """The installed distribution's version (pyproject.toml's `version`), or a note that it is not installed."""
    try:
        return importlib.metadata.version("melanoma-synth")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: run `pip install .` in the checkout)"


def parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per task (docs/reference/cli.md is generated from it)."""
    ap = argparse.ArgumentParser(prog="melanoma", description=__doc__)
    ap.add_argument("--version", action="version", version=f"melanoma {version()}")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="P(malignant) and the decision for image files or folders")
    p.add_argument("images", nargs="+", type=Path, help="image files and/or folders (searched recursively)")
    p.add_argument(
        "--model",
        required=True,
        help="a package folder (models/export/<Arch>/<Arch>_<Dataset>, a downloaded one) or a Hub repo id",
    )
    p.add_argument("--gradcam", type=Path, metavar="DIR", help="also write a GradCAM overlay PNG per image here")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.add_argument(
        "--threshold-file",
        type=Path,
        metavar="FILE",
        help="decide at the threshold `melanoma calibrate` wrote for this package (a site's own) instead "
        "of the package's",
    )
    p.set_defaults(run=cmd_predict)
    p = sub.add_parser("calibrate", help="choose a decision threshold for a new site on its own labelled images")
    p.add_argument(
        "package", help="a package folder (models/export/<Arch>/<Arch>_<Dataset>, a downloaded one) or a Hub repo id"
    )
    p.add_argument(
        "--labels",
        required=True,
        type=Path,
        metavar="CSV|FOLDER",
        help="a CSV with columns image (path, relative to the CSV's folder) and label (benign|malignant), "
        "optionally sex, age_approx, anatom_site_general/localization, fitzpatrick_skin_type (figures per "
        "subgroup), or a folder with benign/ and malignant/ subfolders",
    )
    p.add_argument(
        "--rule",
        choices=["youden", "sensitivity"],
        help="youden (default): max sensitivity + specificity - 1; sensitivity: the highest threshold "
        "reaching --target-sensitivity",
    )
    p.add_argument(
        "--target-sensitivity",
        type=float,
        metavar="T",
        help="with the sensitivity rule (implied), the sensitivity to reach, in (0, 1]; default 0.95",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="the threshold file (default: <cell>_<labels name>_<youden|sensT>_threshold.json in the current folder)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=2000,
        metavar="N",
        help="stratified bootstrap resamples for the 95 %% CIs (default 2000)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument(
        "--force", action="store_true", help="replace an existing --out file that is not this same calibration"
    )
    p.set_defaults(run=cmd_calibrate)
    p = sub.add_parser(
        "profile",
        help="write a named profile (profiles/<name>.yaml) into params.yaml; refuses when "
        "params.yaml holds values no profile sets, unless --keep or --drop",
    )
    p.add_argument(
        "name",
        help="demo (the committed params.yaml), own-data (a folder of your own images, on a CPU), "
        "study (the full-scale study: ISIC, 224 px, "
        "full-size pretrained models, GPU) or rehearsal (the study's shapes, tiny budgets, "
        "CPU)",
    )
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--keep",
        action="store_true",
        help="carry values no profile sets (e.g. a leftover `dvc exp run -S`) into the new profile",
    )
    how.add_argument("--drop", action="store_true", help="discard values no profile sets")
    p.set_defaults(run=cmd_profile)
    text = (
        "before running: the profile in effect, the grid (archs x datasets x seeds), images per dataset, the "
        "stages `dvc status` will run, and for device: cuda the GPU time and disk estimated from H200 rates"
    )
    p = sub.add_parser("plan", help=text, description=text)
    p.set_defaults(run=cmd_plan)
    text = (
        "pretrained weights the params need: `fetch` downloads them into the Hugging Face cache (HF_HOME; needs "
        "network), `check` verifies offline that each is present and loads into the network the params name "
        "(exit 1 and a line per missing weight otherwise)"
    )
    p = sub.add_parser("weights", help=text, description=text)
    p.add_argument("action", choices=["fetch", "check"], help="fetch (network) or check (offline)")
    p.set_defaults(run=cmd_weights)
    for name, text in (
        ("publish", "assemble each cell's Hub folder (weights, ONNX, configs, model card) and upload it"),
        ("download", "download cells from the Hub into models/downloaded/<Arch>/<Arch>_<Dataset>/ (--dest)"),
    ):
        q = sub.add_parser(name, help=text)
        q.add_argument("cells", nargs="*", help="cells <Arch>_<Dataset> (default: the grid in params.yaml)")
        q.add_argument("--all", action="store_true", help="every cell of the grid in params.yaml")
        q.add_argument("--repo", help="repo id template with {cell} (default: publish.repo in params.yaml)")
        if name == "publish":
            q.add_argument("--out", type=Path, default=Path("build/hub"), help="where the Hub folders are written")
            q.add_argument(
                "--dry-run",
                action="store_true",
                help="write the folders and list the uploads; no token or network needed",
            )
            q.set_defaults(run=cmd_publish)
        else:
            q.add_argument(
                "--dest",
                type=Path,
                default=Path("models/downloaded"),
                help="root of the local layout <Arch>/<Arch>_<Dataset>/ (default models/downloaded: not a "
                "DVC output, so a download never replaces the pipeline's trained seeds)",
            )
            q.add_argument("--revision", help="a branch, tag or commit of the repos")
            q.set_defaults(run=cmd_download)
        q.add_argument("--force", action="store_true", help="replace existing folders this command did not write")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:  # `melanoma predict ... | head`: the reader left; not an error of ours
        sys.stdout = open(os.devnull, "w")
        return 0
    except MelanomaError as e:
        print(f"melanoma {args.command}: error: {printable(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno is None:  # not the operating system's: a bug, keep the traceback
            raise
        print(f"melanoma {args.command}: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"melanoma {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
