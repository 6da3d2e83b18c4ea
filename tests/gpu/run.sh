#!/usr/bin/env bash
# tests/gpu/run.sh: the CUDA backend's one prepared check on a GPU machine
# (an H100 or H200 lent through the device tool; about 8 minutes).
#
#   1. builds advdiff with CUDA (cmake -DADVDIFF_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90)
#   2. tests/c/test_cuda_parity      conversions, Philox, an op table, the caching allocator
#   3. tests/gpu/test_cuda_ops.lua   every op forward and backward on CUDA vs the CPU
#   4. tests/gpu/test_cuda_random.lua  Philox streams bit-identical across devices;
#      tests/gpu/test_cuda_metrics.lua  k-NN radii, manifold counts, cdist, mean_cov vs the CPU
#   5. tests/gpu/test_cuda_fixtures.lua  the golden fixtures (ADM, ResNet-18, diffusion) on CUDA
#   6. tests/lua/test_cuda_cpu.lua   autocast and GradScaler (the no-GPU checks skip);
#      tests/lua/test_autocast_models.lua  the golden fixtures under bf16/f16 autocast on CUDA
#   7. benchmarks: tests/bench/gpu_{matmul,conv,adamw,alloc,metrics,adm}.lua against
#      tests/bench/torch_gpu_{matmul,conv,adamw,adm}.py (PyTorch on the same GPU);
#      tests/bench/gpu_metrics.lua (precision/recall at 50k x 50k x 2048, and the CPU at 10k)
#   8. the op suite (--quick) under compute-sanitizer memcheck
# and prints a pass/fail + timing table and the benchmark table LAST.
#
# Before sending the tree, run tests/gpu/prepare.sh on the development machine:
# it fetches the CPU build dependencies as Debian packages (.gpu-deps) and copies
# the fixtures into the checkout (.gpu-fixtures). Then, with the device tool:
#   run(command="bash tests/gpu/run.sh", carry=[".gpu-deps", ".gpu-fixtures"], timeout_s=600)
# Environment: OUT (where logs go; the device tool sets it), BUDGET (seconds, 540),
# QUICK=1 (smaller benchmarks), BENCH=0, SANITIZER=0 (skip those parts), PROFILE=1
# (per-kernel profile of the ADM-64 bf16 step, advdiff and PyTorch; see below),
# ADM_FOCUS=1 (only the bf16 ADM-64 training and sampling figures, both sides).
# Every step has a time limit cut to what the budget has left, so the summary
# always comes out; the full output of every step is in $OUT/gpu_run.log.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
OUTDIR=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUTDIR"
LOG=$OUTDIR/gpu_run.log
: > "$LOG"
BUILD=${BUILD:-$ROOT/build-gpu}
BUDGET=${BUDGET:-540}
QUICK=${QUICK:-0}
JOBS=$(nproc 2>/dev/null || echo 8)
T0=$(date +%s)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
export PATH=/usr/local/cuda/bin:$PATH
QARG=""
[ "$QUICK" = 1 ] && QARG="--quick"

NAMES=(); STATUS=(); SECS=(); NOTES=()
elapsed() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( BUDGET - $(elapsed) )); }

# step NAME LIMIT NOTE_REGEX CMD...: runs CMD with a time limit (cut to the budget),
# its output appended to the log; NOTE_REGEX picks the line shown in the summary.
step() {
  local name=$1 limit=$2 pick=$3; shift 3
  local remain; remain=$(left)
  if [ "$remain" -lt 15 ]; then
    NAMES+=("$name"); STATUS+=("NOT RUN"); SECS+=(0); NOTES+=("no time left in the ${BUDGET}s budget")
    return 1
  fi
  [ "$limit" -gt $((remain - 5)) ] && limit=$((remain - 5))
  echo "== $name (limit ${limit}s) $(date +%T)" | tee -a "$LOG"
  local s; s=$(date +%s)
  local tmp; tmp=$(mktemp)
  rm -f "$OUTDIR/last_step.txt"
  timeout --kill-after=10 "$limit" "$@" > "$tmp" 2>&1
  local rc=$?
  cat "$tmp" >> "$LOG"
  local st
  case $rc in
    0) st=PASS ;; 77) st=SKIP ;; 124|137) st=TIMEOUT ;; *) st="FAIL($rc)" ;;
  esac
  local note=""
  [ -n "$pick" ] && note=$(grep -E "$pick" "$tmp" | tail -1 | cut -c1-90)
  [ -z "$note" ] && [ "$st" != PASS ] && note=$(grep -v '^\s*$' "$tmp" | tail -1 | cut -c1-90)
  NAMES+=("$name"); STATUS+=("$st"); SECS+=($(( $(date +%s) - s ))); NOTES+=("$note")
  echo "   -> $st in $(( $(date +%s) - s ))s ${note}"
  cp "$tmp" "$OUTDIR/last_step.txt"
  rm -f "$tmp"
  [ "$st" = PASS ]
}

# ---------------------------------------------------------------- environment
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || true)"
  echo "nvcc: $(nvcc --version 2>/dev/null | grep -E "release" || echo none)"
  echo "torch: $(python3 -c "import torch; print(torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())" 2>/dev/null || echo none)"
  echo "cpus: $JOBS"
} | tee "$OUTDIR/env.txt" | tee -a "$LOG"

# ---------------------------------------------------------------- dependencies
# Use the machine's own packages where it has them; otherwise unpack the carried
# Debian packages (tests/gpu/prepare.sh) into a private prefix.
DEPS=/tmp/advdiff-deps
CMAKE_EXTRA=()
LIBDIRS=""
multi=/usr/lib/x86_64-linux-gnu
unpack_deps() {
  [ -d "$DEPS/usr" ] && return 0
  if ! ls "$ROOT"/.gpu-deps/*.deb >/dev/null 2>&1; then
    echo "missing build dependencies and no .gpu-deps to unpack (run tests/gpu/prepare.sh, carry .gpu-deps)" | tee -a "$LOG"
    return 1
  fi
  mkdir -p "$DEPS"
  for d in "$ROOT"/.gpu-deps/*.deb; do
    if command -v dpkg-deb >/dev/null; then dpkg-deb -x "$d" "$DEPS"
    else (cd "$DEPS" && ar p "$d" data.tar.xz | tar xJ 2>/dev/null || ar p "$d" data.tar.zst | tar --zstd -x); fi
  done
  LIBDIRS="$DEPS$multi:$DEPS$multi/openblas-openmp"
  export LD_LIBRARY_PATH="$LIBDIRS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "unpacked $(ls "$ROOT"/.gpu-deps/*.deb | wc -l) packages into $DEPS" | tee -a "$LOG"
}
have_pc() { command -v pkg-config >/dev/null && pkg-config --exists lua5.4 2>/dev/null; }
any_exists() { local f; for f in "$@"; do [ -e "$f" ] && return 0; done; return 1; }
if ! have_pc; then
  unpack_deps
  if command -v pkg-config >/dev/null; then :; else
    CMAKE_EXTRA+=("-DPKG_CONFIG_EXECUTABLE=$DEPS/usr/bin/pkgconf")
  fi
  export PKG_CONFIG_PATH="$DEPS$multi/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$DEPS"
fi
if ! any_exists /usr/include/cblas.h /usr/include/*/cblas.h /usr/include/*/*/cblas.h ||
   ! any_exists $multi/libopenblas.so $multi/openblas*/libopenblas.so; then
  unpack_deps
  CMAKE_EXTRA+=("-DOPENBLAS_LIB=$DEPS$multi/openblas-openmp/libopenblas.so.0"
                "-DCBLAS_INCLUDE=$DEPS/usr/include/x86_64-linux-gnu/openblas-openmp")
fi
if [ ! -f /usr/include/stb/stb_image.h ] && [ ! -f /usr/include/stb_image.h ]; then
  unpack_deps
  CMAKE_EXTRA+=("-DSTB_INCLUDE=$DEPS/usr/include/stb")
fi
# readline's headers may be missing where its library is not
[ -f /usr/include/readline/history.h ] || unpack_deps
if ! any_exists $multi/libreadline.so; then
  if any_exists $multi/libreadline.so.8; then CMAKE_EXTRA+=("-DREADLINE_LIB=$multi/libreadline.so.8")
  else unpack_deps; CMAKE_EXTRA+=("-DREADLINE_LIB=$DEPS$multi/libreadline.so.8"); fi
fi
if [ ! -f /usr/include/zlib.h ]; then
  unpack_deps
  CMAKE_EXTRA+=("-DZLIB_INCLUDE_DIR=$DEPS/usr/include" "-DZLIB_LIBRARY=$DEPS$multi/libz.so.1")
fi
# cuDNN: the toolkit's, else the one PyTorch's wheel brings
if [ ! -f /usr/local/cuda/include/cudnn.h ] && [ ! -f /usr/include/cudnn.h ] && [ ! -f /usr/include/x86_64-linux-gnu/cudnn.h ]; then
  CUDNN_ROOT=$(python3 -c "import nvidia.cudnn as m; print(list(m.__path__)[0])" 2>/dev/null)
  if [ -n "$CUDNN_ROOT" ] && [ -f "$CUDNN_ROOT/include/cudnn.h" ]; then
    CMAKE_EXTRA+=("-DCUDNN_ROOT=$CUDNN_ROOT")
    export LD_LIBRARY_PATH="$CUDNN_ROOT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "cuDNN from $CUDNN_ROOT" | tee -a "$LOG"
  else
    echo "no cuDNN found: conv2d on CUDA will report AD_ENOTIMPL" | tee -a "$LOG"
  fi
fi
# headers of the unpacked packages after the system's (Debian's luaconf.h also includes
# lua5.4-deb-multiarch.h from the multiarch dir, which pkg-config's sysroot does not name)
[ -d "$DEPS/usr" ] && CMAKE_EXTRA+=("-DCMAKE_C_FLAGS=-idirafter $DEPS/usr/include/x86_64-linux-gnu -idirafter $DEPS/usr/include")
[ -f /usr/include/dnnl.h ] || [ -f /usr/include/oneapi/dnnl/dnnl.h ] || CMAKE_EXTRA+=("-DADVDIFF_DNNL=OFF")

FIXTURES=${ADVDIFF_FIXTURES:-}
if [ -z "$FIXTURES" ]; then
  if [ -d "$ROOT/.gpu-fixtures" ]; then FIXTURES=$ROOT/.gpu-fixtures; else FIXTURES=$ROOT/../shared/fixtures; fi
fi
export ADVDIFF_FIXTURES=$FIXTURES

# ---------------------------------------------------------------- build
GEN=()
command -v ninja >/dev/null && [ ! -f "$BUILD/CMakeCache.txt" ] && GEN=(-G Ninja)
step "configure" 90 "CUDA toolkit|cuDNN" \
  cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DADVDIFF_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" "${CMAKE_EXTRA[@]}"
BUILT=0
if step "build" 330 "" cmake --build "$BUILD" -j "$JOBS" --target advdiff test_cuda_parity; then BUILT=1; fi
AD=$BUILD/advdiff

if [ "$BUILT" = 1 ]; then
  # ------------------------------------------------------------ correctness
  step "c parity (test_cuda_parity)" 120 "checks|allocator" "$BUILD/test_cuda_parity"
  step "ops fwd+bwd vs cpu (test_cuda_ops)" 150 "cuda ops:" "$AD" tests/gpu/test_cuda_ops.lua --out "$OUTDIR/ops.txt"
  step "philox across devices" 60 "philox on" "$AD" tests/gpu/test_cuda_random.lua
  step "metrics vs cpu (test_cuda_metrics)" 90 "cuda metrics:" "$AD" tests/gpu/test_cuda_metrics.lua $QARG
  step "golden fixtures on cuda" 150 "fixtures on" "$AD" tests/gpu/test_cuda_fixtures.lua
  step "autocast + GradScaler (test_cuda_cpu)" 60 "passed" "$AD" tests/lua/run.lua tests/lua/test_cuda_cpu.lua
  step "autocast goldens on cuda (test_autocast_models)" 90 "passed" \
    env ADVDIFF_TEST_DEVICE=cuda "$AD" tests/lua/run.lua tests/lua/test_autocast_models.lua

  # ------------------------------------------------------------ benchmarks
  BENCH_OURS=$OUTDIR/bench_ours.tsv; BENCH_TORCH=$OUTDIR/bench_torch.tsv
  : > "$BENCH_OURS"; : > "$BENCH_TORCH"
  bench() {   # bench NAME LIMIT SIDE CMD...
    local name=$1 limit=$2 side=$3; shift 3
    step "$name" "$limit" "" "$@"
    grep -h '^BENCH' "$OUTDIR/last_step.txt" 2>/dev/null | cut -f2- >> "$side"
  }
  if [ "${BENCH:-1}" != 0 ]; then
    bench "bench matmul (advdiff)" 90 "$BENCH_OURS" "$AD" tests/bench/gpu_matmul.lua $QARG
    bench "bench matmul (torch)" 90 "$BENCH_TORCH" python3 tests/bench/torch_gpu_matmul.py $QARG
    bench "bench conv2d ADM (advdiff)" 120 "$BENCH_OURS" "$AD" tests/bench/gpu_conv.lua $QARG
    bench "bench conv2d ADM (torch)" 120 "$BENCH_TORCH" python3 tests/bench/torch_gpu_conv.py $QARG
    bench "bench adamw 300M (advdiff)" 60 "$BENCH_OURS" "$AD" tests/bench/gpu_adamw.lua $QARG
    bench "bench adamw 300M (torch)" 60 "$BENCH_TORCH" python3 tests/bench/torch_gpu_adamw.py $QARG
    bench "bench allocator" 45 "$BENCH_OURS" "$AD" tests/bench/gpu_alloc.lua
    # the torch side first: it writes the model FLOPs the advdiff side's MFU needs
    export ADM_FLOPS_FILE=$OUTDIR/adm_flops.txt
    bench "bench ADM-64 train + sampling (torch)" 150 "$BENCH_TORCH" python3 tests/bench/torch_gpu_adm.py $QARG
    bench "bench ADM-64 train + sampling (advdiff)" 180 "$BENCH_OURS" "$AD" tests/bench/gpu_adm.lua $QARG
    step "bench precision/recall 50k (advdiff)" 90 "gpu metrics:" "$AD" tests/bench/gpu_metrics.lua $QARG
    grep -h '^BENCH' "$OUTDIR/last_step.txt" 2>/dev/null | cut -f2- >> "$BENCH_OURS"
  fi

  # ------------------------------------------------------------ ADM focus (ADM_FOCUS=1)
  # Only the issue-5 figures, for a short lease: the bf16 training step and bf16
  # ADM-64 sampling, PyTorch first, each timed the full (not --quick) number of times.
  if [ "${ADM_FOCUS:-0}" != 0 ]; then
    FENV=(ADM_TRAIN_MODES=bf16 ADM_SAMPLE=imagenet64 ADM_SAMPLE_MODES=bf16)
    step "ADM-64 bf16 train + sampling (torch)" 120 "ADM-64 train" env "${FENV[@]}" python3 tests/bench/torch_gpu_adm.py
    step "ADM-64 bf16 train + sampling (advdiff)" 120 "ADM-64 train" env "${FENV[@]}" "$AD" tests/bench/gpu_adm.lua
  fi

  # ------------------------------------------------------------ profile (PROFILE=1)
  # Per-kernel GPU time of two bf16 ADM-64 training steps, advdiff beside PyTorch
  # (tests/gpu/kprof.cpp through CUDA_INJECTION64_PATH; the window is the scripts'
  # profiler_start/stop), the cuDNN algorithms advdiff chose, and the same step
  # timed with the defaults switched one at a time (half attention computed in
  # f32; cuDNN's search instead of its heuristics for bf16), to see what each
  # default is worth.
  if [ "${PROFILE:-0}" != 0 ]; then
    KP=$(bash tests/gpu/kprof.sh /tmp/advdiff-kprof 2>>"$LOG" | tail -1)
    PENV=(ADM_TRAIN_MODES=bf16 ADM_SAMPLE=0)
    if [ -f "$KP" ]; then
      step "kprof ADM-64 bf16 step (torch)" 120 "ADM-64 train" env "${PENV[@]}" ADM_PROFILE_STEPS=2 \
        CUDA_INJECTION64_PATH="$KP" KPROF_OUT="$OUTDIR/kprof_torch.tsv" python3 tests/bench/torch_gpu_adm.py --quick
      cp "$OUTDIR/last_step.txt" "$OUTDIR/prof_torch.txt" 2>/dev/null
      step "kprof ADM-64 bf16 step (advdiff)" 150 "ADM-64 train" env "${PENV[@]}" ADM_PROFILE_STEPS=2 \
        ADVDIFF_CUDNN_LOG=1 CUDA_INJECTION64_PATH="$KP" KPROF_OUT="$OUTDIR/kprof_ours.tsv" "$AD" tests/bench/gpu_adm.lua --quick
      cp "$OUTDIR/last_step.txt" "$OUTDIR/prof_ours.txt" 2>/dev/null
    else
      NAMES+=("kprof"); STATUS+=("SKIP"); SECS+=(0); NOTES+=("tests/gpu/kprof.sh could not build the profiler")
    fi
    step "ADM-64 bf16 step, defaults (again)" 120 "ADM-64 train" env "${PENV[@]}" "$AD" tests/bench/gpu_adm.lua --quick
    step "ADM-64 bf16 step, attention in f32" 120 "ADM-64 train" env "${PENV[@]}" ADVDIFF_ATTN_HALF=0 \
      "$AD" tests/bench/gpu_adm.lua --quick
    step "ADM-64 bf16 step, cuDNN search" 120 "ADM-64 train" env "${PENV[@]}" ADVDIFF_CUDNN_BENCHMARK=1 \
      "$AD" tests/bench/gpu_adm.lua --quick
    step "ADM-64 bf16 step (torch, again)" 120 "ADM-64 train" env "${PENV[@]}" python3 tests/bench/torch_gpu_adm.py --quick
  fi

  # ------------------------------------------------------------ memcheck
  if [ "${SANITIZER:-1}" != 0 ]; then
    if command -v compute-sanitizer >/dev/null; then
      step "compute-sanitizer memcheck (ops --quick)" 200 "ERROR SUMMARY|cuda ops:" \
        env ADVDIFF_CUDNN_BENCHMARK=0 compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 20 \
        "$AD" tests/gpu/test_cuda_ops.lua --quick
    else
      NAMES+=("compute-sanitizer memcheck"); STATUS+=("SKIP"); SECS+=(0); NOTES+=("compute-sanitizer not found")
    fi
  fi
fi

# ---------------------------------------------------------------- the tables (last)
n_fail=0
for st in "${STATUS[@]}"; do case $st in PASS|SKIP) ;; *) n_fail=$((n_fail + 1)) ;; esac; done
{
  echo
  echo "================================ advdiff CUDA check: $(grep '^gpu:' "$OUTDIR/env.txt" | head -1 | cut -c6-)"
  printf "%-44s %-10s %6s  %s\n" "step" "status" "secs" "note"
  for i in "${!NAMES[@]}"; do
    printf "%-44s %-10s %6s  %s\n" "${NAMES[$i]}" "${STATUS[$i]}" "${SECS[$i]}" "${NOTES[$i]}"
  done
  echo "steps: $(( ${#NAMES[@]} - n_fail )) passed or skipped, $n_fail failed or not run; total $(elapsed)s"
  if [ -s "${BENCH_OURS:-/nonexistent}" ]; then
    echo
    printf "%-40s %12s %12s %-8s %8s\n" "benchmark" "advdiff" "torch" "unit" "ad/torch"
    awk -F'\t' 'NR == FNR { t[$1] = $2; next }
      { tv = ($1 in t) ? t[$1] : "";
        r = (tv != "" && tv + 0 != 0) ? sprintf("%.2f", $2 / tv) : "-";
        printf "%-40s %12.4g %12s %-8s %8s\n", $1, $2, (tv == "" ? "-" : sprintf("%.4g", tv)), $3, r }' \
      "$BENCH_TORCH" "$BENCH_OURS"
    echo "(ms: lower is better, so ad/torch < 1 favours advdiff; TFLOP/s and GB/s: higher is better)"
  fi
} | tee "$OUTDIR/summary.txt"
[ "$n_fail" = 0 ] || exit 1
