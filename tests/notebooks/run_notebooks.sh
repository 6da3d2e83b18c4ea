#!/bin/sh
# run_notebooks.sh: executes every notebook in notebooks/ headless with the
# advdiff Jupyter kernel and fails on any cell error.
#   tests/notebooks/run_notebooks.sh ADVDIFF_EXE SOURCE_DIR
# The kernel spec is a temporary one (JUPYTER_PATH) pointing at ADVDIFF_EXE,
# so an installed spec, or none, does not matter. Exit 77 (skip) when
# jupyter nbconvert or ipykernel is missing.
set -eu
exe=$1
src=$2
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
export PYDEVD_DISABLE_FILE_VALIDATION=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
status=0
n=0
for nb in "$src"/notebooks/*.ipynb; do
  [ -e "$nb" ] || continue
  n=$((n + 1))
  name=$(basename "$nb")
  if jupyter nbconvert --to notebook --execute --ExecutePreprocessor.kernel_name=advdiff \
       --ExecutePreprocessor.timeout=300 --output-dir "$tmp/out" "$nb" > "$tmp/log" 2>&1; then
    # the executed notebook must hold outputs; the tour shows an image
    if ! grep -q '"output_type"' "$tmp/out/$name"; then
      echo "FAIL  $name: executed, but no cell has any output"; status=1; continue
    fi
    if [ "$name" = "00_tour.ipynb" ] && ! grep -q '"image/png"' "$tmp/out/$name"; then
      echo "FAIL  $name: no inline image in the output"; status=1; continue
    fi
    echo "ok    $name"
  else
    echo "FAIL  $name"
    cat "$tmp/log"
    status=1
  fi
done
[ "$n" -gt 0 ] || { echo "FAIL  no notebooks in $src/notebooks"; exit 1; }
exit $status
