#!/bin/sh
# install.sh: installs the advdiff Jupyter kernel spec (kernel name "advdiff").
#   jupyter/install.sh [--user | --sys-prefix | --prefix DIR] [--advdiff PATH] [--name NAME]
# Default: --user for a normal user, the system-wide kernels dir for root.
# --advdiff: the executable the kernel runs (default: `advdiff` on PATH, else
# this tree's build/advdiff, else resolved by the kernel at start).
# Needs python3 with ipykernel (Debian: python3-ipykernel) and jupyter-client.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
where=""
name=advdiff
advdiff=""
while [ $# -gt 0 ]; do
  case "$1" in
    --user|--sys-prefix) where="$1" ;;
    --prefix) shift; where="--prefix=$1" ;;
    --advdiff) shift; advdiff="$1" ;;
    --name) shift; name="$1" ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
  shift
done
python=""
for p in /usr/bin/python3 python3; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import ipykernel' >/dev/null 2>&1; then
    python=$(command -v "$p"); break
  fi
done
if [ -z "$python" ]; then
  echo "install.sh: no python3 with ipykernel (Debian: apt-get install python3-ipykernel jupyter-client)" >&2
  exit 1
fi
if ! command -v jupyter >/dev/null 2>&1; then
  echo "install.sh: no jupyter command (Debian: apt-get install jupyter-client)" >&2
  exit 1
fi
if [ -z "$advdiff" ]; then
  advdiff=$(command -v advdiff 2>/dev/null || true)
  [ -n "$advdiff" ] || { [ -x "$here/../build/advdiff" ] && advdiff="$(cd "$here/../build" && pwd)/advdiff"; } || true
fi
if [ -z "$where" ]; then
  if [ "$(id -u)" -eq 0 ]; then where=""; else where="--user"; fi
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/$name"
# with no executable known, the kernel looks for one when it starts
sed -e "s|@PYTHON@|$python|" -e "s|@KERNEL_PY@|$here/advdiff_kernel.py|" -e "s|@ADVDIFF@|$advdiff|" \
  "$here/kernel.json.in" > "$tmp/$name/kernel.json"
[ -n "$advdiff" ] || "$python" - "$tmp/$name/kernel.json" <<'PY'
import json, sys
p = sys.argv[1]; k = json.load(open(p)); k.pop("env", None); json.dump(k, open(p, "w"), indent=2)
PY
jupyter kernelspec install $where --name "$name" "$tmp/$name" >/dev/null
echo "install.sh: kernel '$name' installed (python $python, advdiff ${advdiff:-found at start})"
