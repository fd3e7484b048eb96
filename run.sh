#!/usr/bin/env bash
# The project's entry point on a fresh machine (needs Python 3.11 and git, nothing else):
#   ./run.sh repro [dvc repro args]   create .venv, install the pinned requirements, run the pipeline with its
#                                     stages warm-started (and, with no args, relink its outputs to the DVC cache:
#                                     each file stored once)
#   ./run.sh test  [pytest args]      same setup, then the test suite
#   ./run.sh study [--rehearse] [--dry] [--keep|--drop] [dvc repro args]
#                                     same setup, switch params.yaml to the full-scale study (needs a GPU), print
#                                     its plan (grid, images, stages, GPU hours, disk), check the pretrained
#                                     weights offline, run it with HF_HUB_OFFLINE=1. --dry: plan only.
#                                     --rehearse: the rehearsal profile instead (the study's shapes, tiny budgets,
#                                     on the CPU; images in data/rehearsal/). --keep/--drop: what to do with
#                                     params values no profile sets (`melanoma profile` refuses to guess)
#   ./run.sh setup                    only the setup
# The install is redone only when requirements*.txt, constraints.txt or pyproject.toml change.
# requirements-test.txt (the ISIC Challenge scorer the tests cross-check against) is small and installed too.
# Setup also makes `dvc plots show` pages work offline (tools/dvc_plots_offline.py; needs the npm registry once).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac  # absolute: it goes on PATH below

setup() {
  local stamp
  stamp=$("$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(b"".join(open(f,"rb").read() for f in sys.argv[1:])).hexdigest())' \
          requirements.txt requirements-test.txt constraints.txt pyproject.toml)
  if [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$stamp" ]; then
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    echo "setup: installing pinned requirements into $VENV (first time: a few minutes)"
    # --no-cache-dir: pip would otherwise keep every downloaded wheel (torch's CUDA wheels: GBs) in ~/.cache/pip
    # beside the installed copy, on the 64 GB GPU machines' disk the study's outputs need (docs/dvc.md, "Disk")
    "$VENV/bin/python" -m pip install --quiet --no-cache-dir -r requirements.txt -r requirements-test.txt -c constraints.txt
    "$VENV/bin/python" -m pip install --quiet --no-cache-dir --no-deps -e .
    echo "$stamp" > "$VENV/.installed"
  fi
  # `dvc plots show` offline: vega, vega-lite, vega-embed from the npm registry, inlined in the HTML template
  # .dvc/config.local names (quick once done; registry unreachable: one warning line, setup goes on)
  "$VENV/bin/python" tools/dvc_plots_offline.py
  # dvc.yaml's stage commands call `python`: the venv must come first on PATH
  export PATH="$VENV/bin:$PATH"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  # DVC leaves an output it made as a copy when its content is already cached and the file is not a link to it
  # (a stage rerun that writes the bytes it wrote before): relink after a whole run so that each file is stored
  # once (docs/dvc.md, "Disk")
  # melanoma.startup: one warm server imports torch, timm etc. once for all the stages (docs/benchmarks.md,
  # "Start-up"); MELANOMA_WARM=0 starts every stage cold
  repro) setup; python -m melanoma.startup dvc repro "$@"; if [ $# -eq 0 ]; then dvc checkout --relink -q; fi ;;
  study)
    setup
    profile=study dry=0 leftovers=()
    while [ $# -gt 0 ]; do
      case "$1" in
        --rehearse) profile=rehearsal ;;
        --dry) dry=1 ;;
        --keep|--drop) leftovers=("$1") ;;
        *) break ;;
      esac
      shift
    done
    melanoma profile "$profile" "${leftovers[@]}"
    melanoma plan
    [ "$dry" = 1 ] && exit 0
    melanoma weights check  # offline, in seconds: no stage waits on a download that cannot happen
    export HF_HUB_OFFLINE=1
    dvc repro "$@"; if [ $# -eq 0 ]; then dvc checkout --relink -q; fi ;;
  test) setup; python -m pytest -q "$@" ;;
  *) echo "usage: ./run.sh setup|repro|study|test [args]" >&2; exit 2 ;;
esac
