#!/bin/sh
# run_adm.sh: guided-diffusion's ADM U-Net in advdiff against a PyTorch twin of
# the same network (torch_adm.py, Debian's /usr/bin/python3 with torch) on the
# same threads: forward, forward+backward (ms per call, peak memory) and
# 50-step respaced sampling (images/s).
#
# First the twin proves itself on the golden fixture (adm_tiny output and
# p_sample_loop of guided-diffusion), then torch_adm.py writes random weights
# that advdiff loads with ad.models.adm.from_checkpoint, and advdiff must
# reproduce the twin's output and a short sampling run (bench_adm.lua check).
# Then each case runs in a fresh process per side, the two sides alternating
# (the order flips every round), and the best round counts.
#
# Usage: tests/bench/run_adm.sh [quick|full] [build-dir]
#   quick (default): the tiny config (fixture adm_tiny, 2.1M parameters),
#     batch 1-2, 50-step sampling at batch 2; about a minute on 2 idle cores.
#   full: tiny at batch 1-4 and sampling at batch 4, plus the ImageNet 64x64
#     config (296M parameters) at batch BATCHES64 and 50-step sampling at
#     batch 1 (SAMPLE64=0 skips it; it takes minutes per side on 2 cores).
# Environment: THREADS (2), ROUNDS (2; ROUNDS64, default 1, for the 64x64
# cases), REPS (timed calls after one warm-up: 3 quick, 5 full; REPS64, 2),
# BATCHES64 ("1 2 4"), SAMPLE64 (1), ADVDIFF_FIXTURES (../shared/fixtures).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
mode=${1:-quick}
build=${2:-$root/build}
case $mode in quick|full) ;; *) echo "usage: $0 [quick|full] [build-dir]" >&2; exit 2 ;; esac
threads=${THREADS:-2}
export THREADS=$threads OMP_NUM_THREADS=$threads
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
fixtures=${ADVDIFF_FIXTURES:-$root/../shared/fixtures}
py=/usr/bin/python3
ad="$build/advdiff"

if [ ! -x "$ad" ]; then
  echo "run_adm.sh: $ad not found; build first (cmake --build $build)" >&2
  exit 1
fi
if ! $py -c "import torch" 2>/dev/null; then
  echo "run_adm.sh: $py has no torch (apt-get install python3-torch): the weights and the baseline come from it" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ "$mode" = quick ]; then
  reps=${REPS:-3}; tiny_batches="1 2"; tiny_sample=2
else
  reps=${REPS:-5}; tiny_batches="1 2 3 4"; tiny_sample=4
fi
rounds=${ROUNDS:-2}
rounds64=${ROUNDS64:-1}
reps64=${REPS64:-2}
batches64=${BATCHES64:-1 2 4}
sample64=${SAMPLE64:-1}

echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $threads threads, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== the PyTorch twin against the fixture (guided-diffusion's own outputs)"
$py "$here/torch_adm.py" selftest "$fixtures"

configs=tiny
[ "$mode" = full ] && configs="tiny imagenet64"
for c in $configs; do
  echo "== $c: weights from PyTorch, advdiff must reproduce its outputs"
  $py "$here/torch_adm.py" prepare "$tmp" "$c"
  (cd "$root" && "$ad" "$here/bench_adm.lua" check "$tmp" "$c")
done

# one case on both sides; $1 = round (odd: advdiff first), then the bench arguments
both() {
  rr=$1; shift
  if [ $((rr % 2)) -eq 1 ]; then
    (cd "$root" && "$ad" "$here/bench_adm.lua" bench "$tmp" "$@") >> "$tmp/ad.txt"
    $py "$here/torch_adm.py" bench "$tmp" "$@" >> "$tmp/pt.txt"
  else
    $py "$here/torch_adm.py" bench "$tmp" "$@" >> "$tmp/pt.txt"
    (cd "$root" && "$ad" "$here/bench_adm.lua" bench "$tmp" "$@") >> "$tmp/ad.txt"
  fi
}

: > "$tmp/ad.txt"; : > "$tmp/pt.txt"; : > "$tmp/load.txt"
r=1
while [ $r -le "$rounds" ]; do
  echo "== round $r (tiny), load average $(cut -d' ' -f1-3 /proc/loadavg)"
  for b in $tiny_batches; do both $r tiny fwd_fwdbwd "$b" "$reps"; done
  both $r tiny sample "$tiny_sample" 1 50
  cut -d' ' -f1 /proc/loadavg >> "$tmp/load.txt"
  r=$((r + 1))
done
if [ "$mode" = full ]; then
  r=1
  while [ $r -le "$rounds64" ]; do
    echo "== round $r (imagenet64), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    for b in $batches64; do both $r imagenet64 fwd_fwdbwd "$b" "$reps64"; done
    [ "$sample64" = 1 ] && both $r imagenet64 sample 1 1 50
    cut -d' ' -f1 /proc/loadavg >> "$tmp/load.txt"
    r=$((r + 1))
  done
fi

echo "== results: best round; ms per call (wall clock), CPU ms = process CPU time summed over threads"
echo "   speed ratio = PyTorch time / advdiff time (images/s: advdiff / PyTorch); below 1: advdiff is SLOWER"
echo "   peak RSS = the process's resident-set high-water mark (VmHWM, reset before the timed calls):"
echo "   weights, runtime and allocator caches included, the same measure on both sides; (+N): its"
echo "   growth over the RSS before the calls (activations, grads, workspaces; the first call's included)"
echo "   tensor MB = advdiff's own tensor allocations above the resting state (activations, grads)"
awk '
  function better(key, old, v) { return (key ~ /_img_s$/) ? (v > old) : (key ~ /_mb$/ ? v > old : v < old) }
  FILENAME ~ /\/ad\.txt$/ && $1 == "RESULT" { if (!($2 in A) || better($2, A[$2], $3)) A[$2] = $3 }
  FILENAME ~ /\/pt\.txt$/ && $1 == "RESULT" { if (!($2 in P) || better($2, P[$2], $3)) P[$2] = $3 }
  FILENAME ~ /\/load\.txt$/ { load = load (load == "" ? "" : ", ") $1 }
  function verdict(r) { return r < 1 ? "  advdiff SLOWER" : "" }
  END {
    n = split("tiny_b1 tiny_b2 tiny_b3 tiny_b4 imagenet64_b1 imagenet64_b2 imagenet64_b3 imagenet64_b4", tags, " ")
    for (i = 1; i <= n; i++) for (k = 1; k <= 2; k++) {
      ph = k == 1 ? "fwd" : "fwdbwd"; key = tags[i] "_" ph
      if (!((key "_ms") in A) || !((key "_ms") in P)) continue
      r = P[key "_ms"] / A[key "_ms"]; rc = P[key "_cpums"] / A[key "_cpums"]
      printf "%-14s %-7s advdiff %9.1f ms (CPU %9.1f)  PyTorch %9.1f ms (CPU %9.1f)  speed ratio %5.2f (CPU %5.2f)%s\n",
        tags[i], ph, A[key "_ms"], A[key "_cpums"], P[key "_ms"], P[key "_cpums"], r, rc, verdict(r)
      printf "%-14s %-7s peak RSS advdiff %6.0f MB (+%5.0f)  PyTorch %6.0f MB (+%5.0f)   advdiff tensor peak %7.1f MB\n",
        "", "", A[key "_rss_mb"], A[key "_rssgrow_mb"], P[key "_rss_mb"], P[key "_rssgrow_mb"], A[key "_tensor_mb"]
    }
    for (key in A) if (key ~ /_img_s$/ && (key in P)) {
      r = A[key] / P[key]
      printf "%-24s advdiff %8.4f images/s  PyTorch %8.4f images/s  speed ratio %5.2f%s\n", key, A[key], P[key], r, verdict(r)
    }
    printf "load average (1 min) after each round: %s\n", load
  }' "$tmp/ad.txt" "$tmp/pt.txt" "$tmp/load.txt"
if [ -n "${KEEP_RAW:-}" ]; then cp "$tmp/ad.txt" "$KEEP_RAW.advdiff.txt"; cp "$tmp/pt.txt" "$KEEP_RAW.torch.txt"; fi
