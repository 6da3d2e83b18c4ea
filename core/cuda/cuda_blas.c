/* cuda_blas.c: the CUDA strided-batch GEMM (backend_blas.h) over cuBLAS and
 * cuBLASLt, and the row-major GEMM helper the attention glue shares.
 *
 * Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, so every
 * call passes B first: no transposes are ever materialised. dtypes: f64 in
 * f64; f32 in f32 (TF32 tensor cores only after ad.cuda.allow_tf32(true));
 * f16 and bf16 on tensor cores with f32 accumulation and f32 alpha/beta.
 * Half-precision and TF32 products with one matrix per side (linear layers,
 * folded batched matmuls) go through cuBLASLt with a 32 MiB workspace and the
 * heuristic's algorithm cached per shape, layout and alignment; anything
 * cuBLASLt declines falls back to cublasGemmStridedBatchedEx. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include "cuda_internal.h"
#include "../backend_blas.h"

static _Atomic int use_lt = -1;   /* -1: read ADVDIFF_CUBLASLT once */

bool ad_cuda_blas_use_lt(void) {
  int v = atomic_load(&use_lt);
  if (v < 0) {
    const char *e = getenv("ADVDIFF_CUBLASLT");
    v = !(e && strcmp(e, "0") == 0);
    atomic_store(&use_lt, v);
  }
  return v != 0;
}
void ad_cuda_blas_set_lt(bool on) { atomic_store(&use_lt, on ? 1 : 0); }

static ad_status types_for(ad_dtype dt, cudaDataType *data, cublasComputeType_t *compute, cudaDataType *scale) {
  switch (dt) {
  case AD_F32:
    *data = CUDA_R_32F;
    *compute = ad_cuda_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    *scale = CUDA_R_32F;
    return AD_OK;
  case AD_F64: *data = CUDA_R_64F; *compute = CUBLAS_COMPUTE_64F; *scale = CUDA_R_64F; return AD_OK;
  case AD_F16: *data = CUDA_R_16F; *compute = CUBLAS_COMPUTE_32F; *scale = CUDA_R_32F; return AD_OK;
  case AD_BF16: *data = CUDA_R_16BF; *compute = CUBLAS_COMPUTE_32F; *scale = CUDA_R_32F; return AD_OK;
  default: return AD_FAIL(AD_EDTYPE, "gemm: the CUDA kernel takes f32, f64, f16 or bf16, got %s", ad_dtype_name(dt));
  }
}

/* ---- cuBLASLt with a per-shape algorithm cache ------------------------------------- */

typedef struct {
  int dt, ct, ta, tb;
  int64_t m, n, k, lda, ldb, ldc, batch, sa, sb, sc;
  int align_a, align_b, align_c;
} lt_key;

typedef struct lt_entry {
  lt_key key;
  bool ok;                      /* false: cuBLASLt has no algorithm; use cuBLAS */
  cublasLtMatmulAlgo_t algo;
  struct lt_entry *next;
} lt_entry;

#define LT_BUCKETS 256
static lt_entry *lt_cache[AD_CUDA_MAX_DEVICES][LT_BUCKETS];
static pthread_mutex_t lt_lock = PTHREAD_MUTEX_INITIALIZER;

static int align_of(const void *p) {
  uintptr_t a = (uintptr_t)p;
  int al = 256;
  while (al > 1 && (a % (uintptr_t)al)) al >>= 1;
  return al;
}

static size_t lt_hash(const lt_key *k) {
  const unsigned char *p = (const unsigned char *)k;
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < sizeof *k; i++) { h ^= p[i]; h *= 1099511628211ull; }
  return (size_t)(h % LT_BUCKETS);
}

typedef struct {
  cublasLtMatmulDesc_t op;
  cublasLtMatrixLayout_t a, b, c;
} lt_descs;

static void lt_destroy(lt_descs *d) {
  if (d->op) cublasLtMatmulDescDestroy(d->op);
  if (d->a) cublasLtMatrixLayoutDestroy(d->a);
  if (d->b) cublasLtMatrixLayoutDestroy(d->b);
  if (d->c) cublasLtMatrixLayoutDestroy(d->c);
}

/* column-major layout of a rows x cols matrix with leading dimension ld, batched */
static cublasStatus_t lt_layout(cublasLtMatrixLayout_t *l, cudaDataType dt, int64_t rows, int64_t cols, int64_t ld,
                                int64_t batch, int64_t stride) {
  cublasStatus_t s = cublasLtMatrixLayoutCreate(l, dt, (uint64_t)rows, (uint64_t)cols, ld);
  if (s != CUBLAS_STATUS_SUCCESS || batch <= 1) return s;
  int32_t bc = (int32_t)batch;
  s = cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc);
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride);
  return s;
}

/* Column-major C(M x N) = alpha op(A) op(B) + beta C through cuBLASLt.
 * *done is false when cuBLASLt declined (no algorithm): the caller falls back. */
static ad_status lt_gemm(bool *done, ad_cuda_dev *d, cudaDataType dt, cublasComputeType_t ct, cudaDataType st,
                         bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void *alpha, const void *A,
                         int64_t lda, int64_t sa, const void *B, int64_t ldb, int64_t sb, const void *beta, void *C,
                         int64_t ldc, int64_t sc, int64_t batch) {
  *done = false;
  cublasLtHandle_t lt;
  void *ws;
  size_t ws_size;
  AD_TRY(ad_cuda_lt_handle(&lt, &ws, &ws_size, d));
  lt_key key;
  memset(&key, 0, sizeof key);
  key.dt = dt; key.ct = ct; key.ta = ta; key.tb = tb;
  key.m = M; key.n = N; key.k = K; key.lda = lda; key.ldb = ldb; key.ldc = ldc;
  key.batch = batch; key.sa = sa; key.sb = sb; key.sc = sc;
  key.align_a = align_of(A); key.align_b = align_of(B); key.align_c = align_of(C);

  lt_descs ds = {0};
  cublasStatus_t s = cublasLtMatmulDescCreate(&ds.op, ct, st);
  cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa);
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb);
  if (s == CUBLAS_STATUS_SUCCESS) s = lt_layout(&ds.a, dt, ta ? K : M, ta ? M : K, lda, batch, sa);
  if (s == CUBLAS_STATUS_SUCCESS) s = lt_layout(&ds.b, dt, tb ? N : K, tb ? K : N, ldb, batch, sb);
  if (s == CUBLAS_STATUS_SUCCESS) s = lt_layout(&ds.c, dt, M, N, ldc, batch, sc);
  if (s != CUBLAS_STATUS_SUCCESS) { lt_destroy(&ds); return ad_cublas_check(s, "cublasLt descriptors"); }

  /* the algorithm: cached, or asked of the heuristic with the real alignments */
  size_t h = lt_hash(&key);
  lt_entry *e = NULL;
  pthread_mutex_lock(&lt_lock);
  for (lt_entry *p = lt_cache[d->index][h]; p; p = p->next)
    if (memcmp(&p->key, &key, sizeof key) == 0) { e = p; break; }
  pthread_mutex_unlock(&lt_lock);
  if (!e) {
    e = calloc(1, sizeof *e);
    if (!e) { lt_destroy(&ds); return AD_FAIL(AD_ENOMEM, "gemm: out of host memory for the cuBLASLt cache"); }
    e->key = key;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    uint32_t aa = (uint32_t)key.align_a, ab = (uint32_t)key.align_b, ac = (uint32_t)key.align_c;
    uint64_t wss = ws_size;
    s = cublasLtMatmulPreferenceCreate(&pref);
    if (s == CUBLAS_STATUS_SUCCESS)
      s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wss, sizeof wss);
    if (s == CUBLAS_STATUS_SUCCESS)
      s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof aa);
    if (s == CUBLAS_STATUS_SUCCESS)
      s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof ab);
    if (s == CUBLAS_STATUS_SUCCESS)
      s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac, sizeof ac);
    if (s == CUBLAS_STATUS_SUCCESS)
      s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac, sizeof ac);
    if (s == CUBLAS_STATUS_SUCCESS)
      s = cublasLtMatmulAlgoGetHeuristic(lt, ds.op, ds.a, ds.b, ds.c, ds.c, pref, 1, &res, &found);
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    e->ok = s == CUBLAS_STATUS_SUCCESS && found > 0;
    if (e->ok) e->algo = res.algo;
    pthread_mutex_lock(&lt_lock);
    e->next = lt_cache[d->index][h];
    lt_cache[d->index][h] = e;
    pthread_mutex_unlock(&lt_lock);
  }
  if (!e->ok) { lt_destroy(&ds); return AD_OK; }
  s = cublasLtMatmul(lt, ds.op, alpha, A, ds.a, B, ds.b, beta, C, ds.c, C, ds.c, &e->algo, ws, ws_size, d->stream);
  lt_destroy(&ds);
  if (s != CUBLAS_STATUS_SUCCESS) return AD_OK;   /* fall back to cuBLAS for this call */
  *done = true;
  return ad_cublas_check(s, "cublasLtMatmul");
}

/* ---- the row-major helper ------------------------------------------------------------ */

ad_status ad_cuda_gemm_rm_ex(ad_cuda_dev *d, ad_dtype dtype, ad_dtype cdtype, bool ta, bool tb, int64_t m,
                             int64_t n, int64_t k, double alpha, const void *A, int64_t lda, int64_t sa, const void *B,
                             int64_t ldb, int64_t sb, double beta, void *C, int64_t ldc, int64_t sc, int64_t batch) {
  const bool mixed = cdtype != dtype;
  if (mixed && !((dtype == AD_F16 || dtype == AD_BF16) && cdtype == AD_F32))
    return AD_FAIL(AD_EDTYPE, "gemm: %s operands give %s or f32, not %s", ad_dtype_name(dtype), ad_dtype_name(dtype),
                   ad_dtype_name(cdtype));
  if (m <= 0 || n <= 0 || batch <= 0) return AD_OK;
  if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX || lda > INT32_MAX || ldb > INT32_MAX || ldc > INT32_MAX)
    return AD_FAIL(AD_ESHAPE, "gemm: dimension too large for cuBLAS (%lld x %lld x %lld)", (long long)m, (long long)n,
                   (long long)k);
  /* cuBLAS wants ld >= max(1, stored rows of the column-major view) even for empty dims */
  int64_t need_a = ta ? m : k, need_b = tb ? k : n;
  if (lda < need_a) lda = need_a > 1 ? need_a : 1;
  if (ldb < need_b) ldb = need_b > 1 ? need_b : 1;
  if (ldc < n) ldc = n;
  if (k == 0) {
    adk_ctx kc;
    AD_TRY(ad_cuda_kctx(&kc, NULL, d->index));
    return ad_cuda_check(ad_launch_scale_matrix(&kc, C, cdtype, batch, sc, m, n, ldc, beta), "gemm (k = 0)");
  }
  cudaDataType dt = CUDA_R_32F, st = CUDA_R_32F;
  cublasComputeType_t ct = CUBLAS_COMPUTE_32F;
  AD_TRY(types_for(dtype, &dt, &ct, &st));
  float af = (float)alpha, bf = (float)beta;
  const void *pa = st == CUDA_R_64F ? (const void *)&alpha : (const void *)&af;
  const void *pb = st == CUDA_R_64F ? (const void *)&beta : (const void *)&bf;
  const size_t es = ad_dtype_size(dtype), ces = ad_dtype_size(cdtype);
  const cudaDataType cdt = mixed ? CUDA_R_32F : dt;
  /* column-major: C^T (n x m) = op(B)^T (n x k) op(A)^T (k x m) */
  if ((dtype == AD_F16 || dtype == AD_BF16 || ct == CUBLAS_COMPUTE_32F_FAST_TF32) && ad_cuda_blas_use_lt() &&
      batch == 1 && !mixed) {
    bool done = false;
    AD_TRY(lt_gemm(&done, d, dt, ct, st, tb, ta, n, m, k, pa, B, ldb, sb, A, lda, sa, pb, C, ldc, sc, batch));
    if (done) return AD_OK;
  }
  cublasHandle_t h;
  AD_TRY(ad_cuda_blas_handle(&h, d));
  const cublasOperation_t opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  /* batches in slices of 65535: some cuBLAS kernels put the batch on grid.z */
  for (int64_t b0 = 0; b0 < batch; b0 += 65535) {
    int64_t nb = batch - b0 < 65535 ? batch - b0 : 65535;
    cublasStatus_t s = cublasGemmStridedBatchedEx(
        h, opb, opa, (int)n, (int)m, (int)k, pa, (const char *)B + b0 * sb * (int64_t)es, dt, (int)ldb, sb,
        (const char *)A + b0 * sa * (int64_t)es, dt, (int)lda, sa, pb, (char *)C + b0 * sc * (int64_t)ces, cdt,
        (int)ldc, sc, (int)nb, ct, CUBLAS_GEMM_DEFAULT);
    AD_TRY(ad_cublas_check(s, "cublasGemmStridedBatchedEx"));
  }
  return AD_OK;
}

ad_status ad_cuda_gemm_rm(ad_cuda_dev *d, ad_dtype dtype, bool ta, bool tb, int64_t m, int64_t n, int64_t k,
                          double alpha, const void *A, int64_t lda, int64_t sa, const void *B, int64_t ldb,
                          int64_t sb, double beta, void *C, int64_t ldc, int64_t sc, int64_t batch) {
  return ad_cuda_gemm_rm_ex(d, dtype, dtype, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch);
}

/* ---- the table entry ---------------------------------------------------------------- */

static ad_status cuda_gemm(ad_tensor *c, const ad_tensor *a, const ad_tensor *b, const ad_gemm_args *g) {
  ad_dtype dt = c->dtype;
  if (a->dtype != dt || b->dtype != dt)
    return AD_FAIL(AD_EDTYPE, "gemm: operands must share one dtype, got %s, %s -> %s", ad_dtype_name(a->dtype),
                   ad_dtype_name(b->dtype), ad_dtype_name(dt));
  ad_cuda_dev *d;
  AD_TRY(ad_cuda_dev_get(&d, ad_cuda_dev_of(c)));
  return ad_cuda_gemm_rm(d, dt, g->trans_a, g->trans_b, g->m, g->n, g->k, g->alpha, ad_data(a), g->lda, g->stride_a,
                         ad_data(b), g->ldb, g->stride_b, g->beta, ad_data(c), g->ldc, g->stride_c, g->batch);
}

const struct ad_blas_kernels ad_cuda_blas_kernels = {
  .gemm = cuda_gemm,
};
