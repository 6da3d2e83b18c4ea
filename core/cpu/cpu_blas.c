/* cpu_blas.c: the CPU strided-batch GEMM over OpenBLAS (cblas_sgemm /
 * cblas_dgemm). Transposes are passed to BLAS, never copied. Small batched
 * products run one per OpenMP thread (OpenBLAS drops to one thread inside a
 * parallel region); large ones let OpenBLAS thread each product. f16/bf16 are
 * widened to f32 per product and rounded once on the way back. */
#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include "../backend.h"
#include "../backend_blas.h"
#include "../mathinl.h"

/* Below this many multiply-adds per product, threading inside one product loses
 * to running whole products on separate threads. */
#define GEMM_SMALL_MACS (128 * 128 * 128)

static inline CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }

/* BLAS insists on ld >= max(1, stored columns) even when a dimension is 1 or 0. */
static int64_t fix_ld(int64_t ld, int64_t stored_cols) {
  int64_t need = stored_cols > 1 ? stored_cols : 1;
  return ld < need ? need : ld;
}

static void gemm_one(ad_dtype dt, const ad_gemm_args *g, int64_t lda, int64_t ldb, int64_t ldc,
                     const void *a, const void *b, void *c) {
  if (dt == AD_F32)
    cblas_sgemm(CblasRowMajor, tr(g->trans_a), tr(g->trans_b), (int)g->m, (int)g->n, (int)g->k,
                (float)g->alpha, a, (int)lda, b, (int)ldb, (float)g->beta, c, (int)ldc);
  else
    cblas_dgemm(CblasRowMajor, tr(g->trans_a), tr(g->trans_b), (int)g->m, (int)g->n, (int)g->k,
                g->alpha, a, (int)lda, b, (int)ldb, g->beta, c, (int)ldc);
}

/* C <- beta * C (beta == 0 writes zeros without reading C), for k == 0 */
static void scale_c(ad_dtype dt, void *c, int64_t m, int64_t n, int64_t ldc, double beta) {
  for (int64_t i = 0; i < m; i++)
    for (int64_t j = 0; j < n; j++) {
      if (dt == AD_F32) { float *p = (float *)c + i * ldc + j; *p = beta == 0 ? 0.0f : (float)beta * *p; }
      else { double *p = (double *)c + i * ldc + j; *p = beta == 0 ? 0.0 : beta * *p; }
    }
}

/* Half-precision element i of a 16-bit buffer as f32, and back. */
static inline float half_get(ad_dtype dt, const uint16_t *p, int64_t i) {
  return dt == AD_F16 ? ad_f16_to_f32(p[i]) : ad_bf16_to_f32(p[i]);
}
static inline uint16_t half_put(ad_dtype dt, float v) {
  return dt == AD_F16 ? ad_f32_to_f16(v) : ad_f32_to_bf16(v);
}

/* f16/bf16: widen each stored matrix to a dense f32 copy, sgemm, narrow C. */
static ad_status gemm_half(ad_tensor *c, const ad_tensor *a, const ad_tensor *b, const ad_gemm_args *g) {
  ad_dtype dt = c->dtype;
  int64_t ar = g->trans_a ? g->k : g->m, ac = g->trans_a ? g->m : g->k;  /* stored shapes */
  int64_t br = g->trans_b ? g->n : g->k, bc = g->trans_b ? g->k : g->n;
  size_t na = (size_t)(ar * ac), nb = (size_t)(br * bc), nc = (size_t)(g->m * g->n);
  float *fa = malloc((na + nb + nc) * sizeof(float) + 1);
  if (!fa) return AD_FAIL(AD_ENOMEM, "gemm: out of memory widening %s operands", ad_dtype_name(dt));
  float *fb = fa + na, *fc = fb + nb;
  const uint16_t *pa = ad_data(a), *pb = ad_data(b);
  uint16_t *pc = ad_data(c);
  ad_gemm_args g1 = *g;
  g1.batch = 1;
  for (int64_t i = 0; i < g->batch; i++) {
    const uint16_t *ai = pa + i * g->stride_a, *bi = pb + i * g->stride_b;
    uint16_t *ci = pc + i * g->stride_c;
    for (int64_t r = 0; r < ar; r++)
      for (int64_t q = 0; q < ac; q++) fa[r * ac + q] = half_get(dt, ai, r * g->lda + q);
    for (int64_t r = 0; r < br; r++)
      for (int64_t q = 0; q < bc; q++) fb[r * bc + q] = half_get(dt, bi, r * g->ldb + q);
    if (g->beta != 0)
      for (int64_t r = 0; r < g->m; r++)
        for (int64_t q = 0; q < g->n; q++) fc[r * g->n + q] = half_get(dt, ci, r * g->ldc + q);
    if (g->k == 0) scale_c(AD_F32, fc, g->m, g->n, g->n, g->beta);
    else gemm_one(AD_F32, &g1, fix_ld(ac, ac), fix_ld(bc, bc), fix_ld(g->n, g->n), fa, fb, fc);
    for (int64_t r = 0; r < g->m; r++)
      for (int64_t q = 0; q < g->n; q++) ci[r * g->ldc + q] = half_put(dt, fc[r * g->n + q]);
  }
  free(fa);
  return AD_OK;
}

static ad_status cpu_gemm(ad_tensor *c, const ad_tensor *a, const ad_tensor *b, const ad_gemm_args *g) {
  ad_dtype dt = c->dtype;
  if (a->dtype != dt || b->dtype != dt)
    return AD_FAIL(AD_EDTYPE, "gemm: operands must share one dtype, got %s, %s -> %s",
                   ad_dtype_name(a->dtype), ad_dtype_name(b->dtype), ad_dtype_name(dt));
  if (g->m <= 0 || g->n <= 0 || g->batch <= 0) return AD_OK;
  if (g->m > INT32_MAX || g->n > INT32_MAX || g->k > INT32_MAX || g->lda > INT32_MAX ||
      g->ldb > INT32_MAX || g->ldc > INT32_MAX)
    return AD_FAIL(AD_ESHAPE, "gemm: dimension too large for BLAS (%lld x %lld x %lld)",
                   (long long)g->m, (long long)g->n, (long long)g->k);
  if (dt == AD_F16 || dt == AD_BF16) return gemm_half(c, a, b, g);
  if (dt != AD_F32 && dt != AD_F64)
    return AD_FAIL(AD_EDTYPE, "gemm: f32, f64, f16 or bf16 expected, got %s", ad_dtype_name(dt));

  size_t es = ad_dtype_size(dt);
  const char *pa = ad_data(a), *pb = ad_data(b);
  char *pc = ad_data(c);
  int64_t lda = fix_ld(g->lda, g->trans_a ? g->m : g->k);
  int64_t ldb = fix_ld(g->ldb, g->trans_b ? g->k : g->n);
  int64_t ldc = fix_ld(g->ldc, g->n);
  int64_t batch = g->batch;
  if (g->k == 0) {
    for (int64_t i = 0; i < batch; i++) scale_c(dt, pc + i * g->stride_c * es, g->m, g->n, ldc, g->beta);
    return AD_OK;
  }
  double macs = (double)g->m * g->n * g->k;
  if (batch > 1 && g->stride_c != 0 && macs < GEMM_SMALL_MACS && omp_get_max_threads() > 1) {
    #pragma omp parallel for schedule(dynamic, 1) if (macs * batch > 32768)
    for (int64_t i = 0; i < batch; i++)
      gemm_one(dt, g, lda, ldb, ldc, pa + i * g->stride_a * es, pb + i * g->stride_b * es,
               pc + i * g->stride_c * es);
  } else {
    for (int64_t i = 0; i < batch; i++)
      gemm_one(dt, g, lda, ldb, ldc, pa + i * g->stride_a * es, pb + i * g->stride_b * es,
               pc + i * g->stride_c * es);
  }
  return AD_OK;
}

const struct ad_blas_kernels ad_cpu_blas_kernels = {
  .gemm = cpu_gemm,
};
