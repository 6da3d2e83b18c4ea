#!/bin/sh
# run_notebooks.sh: executes every notebook in notebooks/ headless with the
# advdiff Jupyter kernel and fails on any cell error.
#   tests/notebooks/run_notebooks.sh ADVDIFF_EXE SOURCE_DIR [NOTEBOOK...]
# NOTEBOOK names (e.g. 01_quickstart.ipynb) pick some of them; default all.
# The kernel spec is a temporary one (JUPYTER_PATH) pointing at ADVDIFF_EXE,
# so an installed spec, or none, does not matter. The notebooks write their
# runs under $ADVDIFF_NOTEBOOK_OUT, a temporary folder removed at the end
# (each notebook in its own subfolder, so each runs alone, in any order). A
# notebook whose metadata lists files under advdiff.needs (a dataset) is
# skipped, with a message, when one is missing. With NOTEBOOKS_KEEP=DIR the
# executed notebooks are copied to DIR (to look at their outputs). Exit 77
# (skip) when jupyter nbconvert or ipykernel is missing.
set -eu
exe=$1
src=$2
shift 2
python=""
for p in /usr/bin/python3 python3; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import ipykernel, nbconvert' >/dev/null 2>&1; then
    python=$(command -v "$p"); break
  fi
done
if [ -z "$python" ] || ! command -v jupyter >/dev/null 2>&1 || ! jupyter nbconvert --version >/dev/null 2>&1; then
  echo "skip: jupyter nbconvert / python3-ipykernel not installed (scripts/setup.sh --test)"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/kernels/advdiff"
sed -e "s|@PYTHON@|$python|" -e "s|@KERNEL_PY@|$src/jupyter/advdiff_kernel.py|" -e "s|@ADVDIFF@|$exe|" \
  "$src/jupyter/kernel.json.in" > "$tmp/kernels/advdiff/kernel.json"
export JUPYTER_PATH="$tmp" JUPYTER_RUNTIME_DIR="$tmp/runtime" JUPYTER_DATA_DIR="$tmp/data"
# passive OpenMP waits: 02_sweep runs two advdiff processes at once on the CI's 2 cores, and
# spinning threads of one would take the cores from the other
export PYDEVD_DISABLE_FILE_VALIDATION=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
export ADVDIFF_NOTEBOOK_OUT="$tmp/runs"
if [ $# -eq 0 ]; then
  set -- "$src"/notebooks/*.ipynb
else
  for a; do shift; set -- "$@" "$src/notebooks/$(basename "$a")"; done
fi
status=0
n=0
for nb in "$@"; do
  [ -e "$nb" ] || { [ "$nb" = "$src/notebooks/*.ipynb" ] && continue; echo "FAIL  no notebook $nb"; status=1; continue; }
  n=$((n + 1))
  name=$(basename "$nb")
  # files the notebook needs (its metadata's advdiff.needs), the first one missing
  missing=$("$python" -c 'import json, os, sys
nb = json.load(open(sys.argv[1]))
for f in nb.get("metadata", {}).get("advdiff", {}).get("needs", []):
    if not os.path.exists(f):
        print(f); break' "$nb")
  if [ -n "$missing" ]; then
    echo "skip  $name: needs $missing"
    continue
  fi
  t0=$(date +%s)
  if jupyter nbconvert --to notebook --execute --ExecutePreprocessor.kernel_name=advdiff \
       --ExecutePreprocessor.timeout=300 --output-dir "$tmp/out" "$nb" > "$tmp/log" 2>&1; then
    # the executed notebook must hold outputs, and one that calls display() must show an image
    if ! grep -q '"output_type"' "$tmp/out/$name"; then
      echo "FAIL  $name: executed, but no cell has any output"; status=1; continue
    fi
    if grep -q 'display(' "$nb" && ! grep -q '"image/png"' "$tmp/out/$name"; then
      echo "FAIL  $name: it calls display() but shows no inline image"; status=1; continue
    fi
    if [ -n "${NOTEBOOKS_KEEP:-}" ]; then mkdir -p "$NOTEBOOKS_KEEP" && cp "$tmp/out/$name" "$NOTEBOOKS_KEEP/"; fi
    echo "ok    $name ($(( $(date +%s) - t0 )) s)"
  else
    echo "FAIL  $name"
    cat "$tmp/log"
    status=1
  fi
done
[ "$n" -gt 0 ] || { echo "FAIL  no notebooks in $src/notebooks"; exit 1; }
exit $status
