#!/usr/bin/env bash
# tests/gpu/kprof.sh OUTDIR: build OUTDIR/libkprof.so, the CUPTI kernel profiler
# of tests/gpu/kprof.cpp (no nsys on the lent GPU machines). Prints the library's
# path on its last line; everything else goes to stderr.
#
# Profile any CUDA program unchanged (the driver loads it at cuInit):
#   CUDA_INJECTION64_PATH=$(bash tests/gpu/kprof.sh /tmp/kp | tail -1) ./prog
#   CUDA_INJECTION64_PATH=$(bash tests/gpu/kprof.sh /tmp/kp | tail -1) python3 script.py
# The report (stderr, lines "kprof: ...") covers each profiler window; a program
# brackets a region, synchronizing first so the window holds whole kernels:
#   torch:  torch.cuda.synchronize(); torch.cuda.cudart().cudaProfilerStart()
#           ... region ...
#           torch.cuda.synchronize(); torch.cuda.cudart().cudaProfilerStop()
#   C/CUDA: cudaDeviceSynchronize(); cudaProfilerStart(); ... cudaDeviceSynchronize(); cudaProfilerStop();
#           (or cuProfilerStart/cuProfilerStop from the driver API)
# With no window, everything recorded is reported at exit as window 0.
# Env: KPROF_TOP=N rows (default 30); KPROF_OUT=file appends every kernel,
# tab-separated: window, total_ms, calls, avg_us, demangled name.
# The CUPTI header and library come from $CUDA_HOME, /usr/local/cuda, or the
# PyTorch wheel's nvidia packages (site-packages/nvidia/...).
set -euo pipefail
OUTDIR=${1:?usage: bash tests/gpu/kprof.sh OUTDIR}
SRC=$(cd "$(dirname "$0")" && pwd)/kprof.cpp
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

# Candidate roots, in order of preference: the toolkit, then the wheels.
roots=()
for r in "${CUDA_HOME:-}" /usr/local/cuda; do [ -n "$r" ] && [ -d "$r" ] && roots+=("$r" "$r/extras/CUPTI"); done
py_site=$(python3 -c "import nvidia.cuda_cupti as m; print(list(m.__path__)[0])" 2>/dev/null || true)
[ -n "$py_site" ] && roots+=("$py_site")
py_nv=$(python3 -c "import nvidia as m; print(list(m.__path__)[0])" 2>/dev/null || true)
shopt -s nullglob
for d in ${py_nv:+"$py_nv"/*} /opt/*/.venv/lib/python3*/site-packages/nvidia/* \
         /usr/local/lib/python3*/dist-packages/nvidia/* /usr/lib/python3/dist-packages/nvidia/*; do
  [ -d "$d" ] && roots+=("$d")
done

find_hdr() {  # $1 = header name: first root's include/ that has it
  for r in "${roots[@]}"; do [ -f "$r/include/$1" ] && { echo "$r/include"; return; }; done
}
find_lib() {  # libcupti.so or libcupti.so.N (wheels ship only the versioned name)
  local r d f
  for r in "${roots[@]}"; do
    for d in "$r/lib64" "$r/lib"; do
      for f in "$d"/libcupti.so "$d"/libcupti.so.[0-9]*; do [ -f "$f" ] && { echo "$f"; return; }; done
    done
  done
}

INC=$(find_hdr cupti.h)
LIB=$(find_lib)
if [ -z "$INC" ] || [ -z "$LIB" ]; then
  [ -z "$INC" ] && echo "kprof.sh: error: cupti.h not found" >&2
  [ -z "$LIB" ] && echo "kprof.sh: error: libcupti.so not found" >&2
  echo "kprof.sh: looked in: ${roots[*]:-(no candidate directories)}" >&2
  echo "kprof.sh: set CUDA_HOME to a toolkit with CUPTI, or pip install nvidia-cuda-cupti" >&2
  exit 1
fi
# cupti.h includes cuda.h; a wheel's cupti include dir may lack it.
CUDA_INC=$INC
[ -f "$INC/cuda.h" ] || CUDA_INC=$(find_hdr cuda.h)
if [ -z "$CUDA_INC" ]; then echo "kprof.sh: error: cuda.h not found (needed by cupti.h)" >&2; exit 1; fi
LIBDIR=$(dirname "$LIB")
echo "kprof.sh: cupti.h from $INC, $(basename "$LIB") from $LIBDIR" >&2

# Linking the file itself records its soname (libcupti.so.N): a process that has
# already loaded CUPTI (PyTorch's wheel) shares that copy instead of a second one.
g++ -O2 -shared -fPIC -std=c++17 -Wall -Wextra -pthread \
  -I"$INC" ${CUDA_INC:+-I"$CUDA_INC"} "$SRC" -o "$OUTDIR/libkprof.so" \
  "$LIB" -Wl,-rpath,"$LIBDIR"
echo "$OUTDIR/libkprof.so"
