#!/bin/sh
# run.sh FUZZ_DIR NAME SECONDS [libFuzzer options...]: runs one harness for a
# bounded time over its seed corpus (FUZZ_DIR/seeds/NAME, from make_corpus.lua)
# and the inputs it found before (FUZZ_DIR/corpus/NAME). Crash inputs go to
# FUZZ_DIR/crashes/NAME/; the exit status is non-zero when one was found.
set -eu
D=$1; N=$2; S=$3
shift 3
mkdir -p "$D/corpus/$N" "$D/crashes/$N" "$D/seeds/$N"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
exec "$D/fuzz_$N" -max_total_time="$S" -max_len="${AD_FUZZ_MAX_LEN:-65536}" -timeout=20 \
  -rss_limit_mb=4096 -malloc_limit_mb=4096 -artifact_prefix="$D/crashes/$N/" -print_final_stats=1 \
  "$@" "$D/corpus/$N" "$D/seeds/$N"
