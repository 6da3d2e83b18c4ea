/* bench_matmul.c: the OpenBLAS baseline for advdiff's matmul benchmark:
 * cblas_sgemm GFLOP/s on square f32 products, called directly, so that
 * bench_linalg.lua's ad.matmul figures can be read as a fraction of what the
 * library underneath reaches. Not linked against advdiff.
 *
 * Build and run (run_conv.sh does this):
 *   cc -O2 tests/bench/bench_matmul.c -I/usr/include/x86_64-linux-gnu/openblas-openmp -lopenblas -o bench_matmul
 *   OMP_NUM_THREADS=2 ./bench_matmul [n ...]        (default 1024 2048)
 * Prints "RESULT matmul_<n> <GFLOP/s>" lines. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int bench(int n) {
  size_t nn = (size_t)n * (size_t)n;
  float *a = malloc(nn * sizeof *a), *b = malloc(nn * sizeof *b), *c = malloc(nn * sizeof *c);
  if (!a || !b || !c) { fprintf(stderr, "out of memory for n=%d\n", n); return 1; }
  for (size_t i = 0; i < nn; i++) { a[i] = (float)(i % 7) * 0.25f - 0.75f; b[i] = (float)(i % 5) * 0.5f - 1.0f; }
  int reps = n <= 1024 ? 10 : 4;
  double best = 1e30;
  for (int r = 0; r < reps + 1; r++) {
    double t0 = now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    double t = now() - t0;
    if (r > 0 && t < best) best = t;   /* the first call warms the threads and caches */
  }
  double gflops = 2.0 * n * (double)n * n / best / 1e9;
  printf("openblas sgemm %4d^3: %8.2f ms %7.1f GFLOP/s\n", n, best * 1e3, gflops);
  printf("RESULT matmul_%d %.2f\n", n, gflops);
  free(a); free(b); free(c);
  return 0;
}

int main(int argc, char **argv) {
  int rc = 0;
  if (argc > 1) for (int i = 1; i < argc; i++) rc |= bench(atoi(argv[i]));
  else { rc |= bench(1024); rc |= bench(2048); }
  return rc;
}
