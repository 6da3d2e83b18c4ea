#!/bin/sh
# run_conv.sh: advdiff vs its baselines on 2 threads.
#   matmul: ad.matmul GFLOP/s against cblas_sgemm called directly (bench_matmul.c)
#   conv2d: advdiff forward and forward+backward at ADM shapes against PyTorch
#           (torch_conv.py with Debian's /usr/bin/python3; skipped if torch is missing)
# Prints each side's figures, then the ratios (> 1: advdiff faster).
# Usage: tests/bench/run_conv.sh [build-dir]      (default: build)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build}
threads=${THREADS:-2}
export OMP_NUM_THREADS=$threads
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ ! -x "$build/advdiff" ]; then
  echo "run_conv.sh: $build/advdiff not found; build first (cmake --build $build)" >&2
  exit 1
fi

echo "== OpenBLAS sgemm ($threads threads)"
cc -O2 "$here/bench_matmul.c" -I/usr/include/x86_64-linux-gnu/openblas-openmp -lopenblas -o "$tmp/bench_matmul"
"$tmp/bench_matmul" | tee "$tmp/blas.txt"

echo "== advdiff ($threads threads)"
(cd "$root" && "$build/advdiff" "$here/bench_linalg.lua") | tee "$tmp/ad.txt"

if /usr/bin/python3 -c "import torch" 2>/dev/null; then
  echo "== PyTorch ($threads threads)"
  /usr/bin/python3 "$here/torch_conv.py" "$threads" | tee "$tmp/torch.txt"
else
  echo "== PyTorch: /usr/bin/python3 has no torch, conv comparison skipped"
  : > "$tmp/torch.txt"
fi

echo "== ratios"
awk '
  FILENAME ~ /\/blas\.txt$/ && $1 == "RESULT" { blas[$2] = $3 }
  FILENAME ~ /\/ad\.txt$/ && $1 == "RESULT" { ad[$2] = $3 }
  FILENAME ~ /\/torch\.txt$/ && $1 == "RESULT" { pt[$2] = $3 }
  END {
    for (k in blas) if (k in ad) printf "%-22s advdiff/OpenBLAS GFLOP/s = %.2f\n", k, ad[k] / blas[k]
    for (k in pt) if (k in ad) printf "%-22s advdiff speed / PyTorch speed = %.2f\n", k, pt[k] / ad[k]
  }' "$tmp/blas.txt" "$tmp/ad.txt" "$tmp/torch.txt" | sort
