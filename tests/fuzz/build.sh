#!/bin/sh
# build.sh SRC_DIR OUT_DIR: builds the libFuzzer harnesses of tests/fuzz with
# clang -fsanitize=fuzzer,address,undefined, independently of the compiler
# the main build uses. Objects are rebuilt only when a source or a core
# header is newer. Environment: AD_FUZZ_CC (clang), CBLAS_INCLUDE,
# STB_INCLUDE, AD_FUZZ_DNNL (1/0, default: use oneDNN when its header exists).
set -eu
SRC=$(cd "$1" && pwd)
mkdir -p "$2/obj"
OUT=$(cd "$2" && pwd)
CC=${AD_FUZZ_CC:-clang}
CBLAS_INC=${CBLAS_INCLUDE:-}
if [ -z "$CBLAS_INC" ]; then
  for d in /usr/include/x86_64-linux-gnu/openblas-openmp /usr/include/x86_64-linux-gnu/openblas-pthread \
           /usr/include/openblas /usr/include/x86_64-linux-gnu /usr/include; do
    if [ -f "$d/cblas.h" ]; then CBLAS_INC=$d; break; fi
  done
fi
STB_INC=${STB_INCLUDE:-/usr/include/stb}
DNNL=${AD_FUZZ_DNNL:-}
if [ -z "$DNNL" ]; then
  if [ -f /usr/include/dnnl.h ] || [ -f /usr/include/oneapi/dnnl/dnnl.h ]; then DNNL=1; else DNNL=0; fi
fi
DEFS=""
LIBS="-lopenblas -lz -lm"
if [ "$DNNL" = 1 ]; then DEFS="-DAD_HAVE_DNNL=1"; LIBS="$LIBS -ldnnl"; fi
CFLAGS="-std=gnu11 -O1 -g -fno-omit-frame-pointer -fopenmp -fsanitize=address,undefined -fno-sanitize-recover=undefined -I$SRC/core -I$CBLAS_INC -I$STB_INC $DEFS -w"
export CC CFLAGS

newest_header=$(ls -t "$SRC"/core/*.h "$SRC"/tests/fuzz/*.h | head -n 1)
for f in "$SRC"/core/*.c "$SRC"/core/ops/*.c "$SRC"/core/cpu/*.c "$SRC"/core/formats/*.c; do
  o="$OUT/obj/$(echo "${f#$SRC/}" | tr / _).o"
  if [ ! -f "$o" ] || [ "$f" -nt "$o" ] || [ "$newest_header" -nt "$o" ]; then echo "$f $o"; fi
done | xargs -r -P "${AD_FUZZ_JOBS:-2}" -n 2 sh -c 'echo "  CC $0"; $CC $CFLAGS -fsanitize=fuzzer-no-link -c "$0" -o "$1"'

rm -f "$OUT/libad_fuzz.a"
ar rcs "$OUT/libad_fuzz.a" "$OUT"/obj/*.o
for h in "$SRC"/tests/fuzz/fuzz_*.c; do
  name=$(basename "$h" .c)
  echo "  LINK $name"
  $CC $CFLAGS -I"$SRC/tests/fuzz" -fsanitize=fuzzer "$h" "$OUT/libad_fuzz.a" $LIBS -o "$OUT/$name"
done
