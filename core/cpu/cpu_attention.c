/* cpu_attention.c: fused scaled-dot-product attention on the CPU.
 *
 * out = softmax(scale * Q K^T + mask) V for each of B (batch x head) slices,
 * with two OpenBLAS gemms per slice and the masked, max-subtracted softmax in
 * between, all in one per-thread (Lq x Lk) scratch buffer. Nothing of size
 * B x Lq x Lk is kept: forward saves only the row log-sum-exp, and backward
 * recomputes P = exp(scale Q K^T + mask - lse) slice by slice:
 *   dV = P^T dO,  dP = dO V^T,  dS = P (dP - rowsum(P dP)),
 *   dQ = scale dS K,  dK = scale dS^T Q.
 * With at least as many slices as threads, each OpenMP thread takes whole
 * slices and OpenBLAS runs single-threaded inside (it detects the parallel
 * region); with fewer slices the loop is serial and OpenBLAS and the row
 * loops use the threads instead. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "../backend.h"
#include "../backend_nn.h"
#include "cpu_iter.h"

#define AT_INLINE static inline __attribute__((always_inline))

typedef struct {
  int f64;
  int64_t B, Lq, Lk, D, Dv;
  const char *q, *k, *v;
  /* mask: data at element 0, its dtype, and strides; batch dims are unravelled per slice */
  const char *mask;
  ad_dtype mdt;
  int nbatch;                       /* number of batch dims */
  const int64_t *bshape;            /* q's batch dims */
  const int64_t *mstrides;          /* mask strides (nbatch + 2) */
  double scale;
  bool causal;
} attn_ctx;

AT_INLINE double ldv(const void *p, int64_t i, int f64) {
  return f64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}
AT_INLINE void stv(void *p, int64_t i, double v, int f64) {
  if (f64) ((double *)p)[i] = v;
  else ((float *)p)[i] = (float)v;
}

static void gemm(int f64, bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const void *a,
                 int64_t lda, const void *b, int64_t ldb, double beta, void *c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  /* BLAS would reject the zero leading dimensions; C = beta C is all there is */
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++) {
        int64_t o = i * ldc + j;
        stv(c, o, beta == 0.0 ? 0.0 : beta * ldv(c, o, f64), f64);
      }
    return;
  }
  if (f64)
    cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)m, (int)n,
                (int)k, alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
  else
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)m, (int)n,
                (int)k, (float)alpha, a, (int)lda, b, (int)ldb, (float)beta, c, (int)ldc);
}

static int64_t mask_base(const attn_ctx *c, int64_t b) {
  int64_t off = 0;
  for (int d = c->nbatch - 1; d >= 0; d--) {
    off += (b % c->bshape[d]) * c->mstrides[d];
    b /= c->bshape[d];
  }
  return off;
}

/* S row i (scaled scores) -> masked scores in place; -inf where masked */
AT_INLINE void mask_row(const attn_ctx *c, void *srow, int64_t mb, int64_t i) {
  const int f64 = c->f64;
  const int64_t Lk = c->Lk;
  if (c->causal)
    for (int64_t j = i + 1; j < Lk; j++) stv(srow, j, -INFINITY, f64);
  if (!c->mask) return;
  const int64_t ms0 = c->mstrides[c->nbatch], ms1 = c->mstrides[c->nbatch + 1];
  const int64_t jend = c->causal ? (i + 1 < Lk ? i + 1 : Lk) : Lk;
  if (c->mdt == AD_BOOL) {
    const uint8_t *m = (const uint8_t *)c->mask + mb + i * ms0;
    for (int64_t j = 0; j < jend; j++)
      if (!m[j * ms1]) stv(srow, j, -INFINITY, f64);
  } else {
    const char *m = c->mask + (mb + i * ms0) * (f64 ? 8 : 4);
    for (int64_t j = 0; j < jend; j++) stv(srow, j, ldv(srow, j, f64) + ldv(m, j * ms1, f64), f64);
  }
}

/* rows [i0, i1) of slice b: mask, softmax in place, lse */
AT_INLINE void softmax_rows(const attn_ctx *c, void *S, void *lse, int64_t b, int64_t mb, int64_t i0, int64_t i1) {
  const int f64 = c->f64;
  const int64_t Lk = c->Lk;
  for (int64_t i = i0; i < i1; i++) {
    void *row = (char *)S + i * Lk * (f64 ? 8 : 4);
    mask_row(c, row, mb, i);
    double mx = -INFINITY;
    if (f64) {
      for (int64_t j = 0; j < Lk; j++) { double v = ((double *)row)[j]; mx = v > mx ? v : mx; }
    } else {
      const float *r = row;
      float m = -INFINITY;
      #pragma omp simd reduction(max:m)
      for (int64_t j = 0; j < Lk; j++) m = r[j] > m ? r[j] : m;
      mx = m;
    }
    if (mx == -INFINITY) {  /* every key masked: a zero row, not NaN */
      for (int64_t j = 0; j < Lk; j++) stv(row, j, 0.0, f64);
      if (lse) stv(lse, b * c->Lq + i, -INFINITY, f64);
      continue;
    }
    double s = 0;
    if (f64) {
      double *r = row;
      for (int64_t j = 0; j < Lk; j++) { double e = exp(r[j] - mx); r[j] = e; s += e; }
      double inv = 1.0 / s;
      for (int64_t j = 0; j < Lk; j++) r[j] *= inv;
    } else {
      float *r = row;
      s = ad_cpu_exp_shift_f32(r, r, Lk, (float)mx);
      float inv = (float)(1.0 / s);
      #pragma omp simd
      for (int64_t j = 0; j < Lk; j++) r[j] *= inv;
    }
    if (lse) stv(lse, b * c->Lq + i, mx + log(s), f64);
  }
}

/* recompute P rows [i0, i1) from the masked scores and the saved lse */
AT_INLINE void prob_rows(const attn_ctx *c, void *S, const void *lse, int64_t b, int64_t mb, int64_t i0, int64_t i1) {
  const int f64 = c->f64;
  const int64_t Lk = c->Lk;
  for (int64_t i = i0; i < i1; i++) {
    void *row = (char *)S + i * Lk * (f64 ? 8 : 4);
    mask_row(c, row, mb, i);
    double l = ldv(lse, b * c->Lq + i, f64);
    if (l == -INFINITY) {
      for (int64_t j = 0; j < Lk; j++) stv(row, j, 0.0, f64);
      continue;
    }
    if (f64) {
      double *r = row;
      for (int64_t j = 0; j < Lk; j++) r[j] = exp(r[j] - l);
    } else {
      ad_cpu_exp_shift_f32(row, row, Lk, (float)l);
    }
  }
}

/* dP rows -> dS = P (dP - rowsum(P dP)) in place of dP */
AT_INLINE void ds_rows(const attn_ctx *c, const void *P, void *dP, int64_t i0, int64_t i1) {
  const int f64 = c->f64;
  const int64_t Lk = c->Lk;
  for (int64_t i = i0; i < i1; i++) {
    const char *pr = (const char *)P + i * Lk * (f64 ? 8 : 4);
    char *dr = (char *)dP + i * Lk * (f64 ? 8 : 4);
    double s = 0;
    for (int64_t j = 0; j < Lk; j++) s += ldv(pr, j, f64) * ldv(dr, j, f64);
    for (int64_t j = 0; j < Lk; j++) stv(dr, j, ldv(pr, j, f64) * (ldv(dr, j, f64) - s), f64);
  }
}

static void init_ctx(attn_ctx *c, const ad_tensor *q, const ad_tensor *k, const ad_tensor *v,
                     const ad_tensor *mask, double scale, bool causal) {
  int nd = q->ndim;
  c->f64 = q->dtype == AD_F64;
  c->Lq = q->shape[nd - 2];
  c->D = q->shape[nd - 1];
  c->Lk = k->shape[nd - 2];
  c->Dv = v->shape[nd - 1];
  c->B = 1;
  for (int d = 0; d < nd - 2; d++) c->B *= q->shape[d];
  c->q = ad_data(q);
  c->k = ad_data(k);
  c->v = ad_data(v);
  c->mask = mask ? ad_data(mask) : NULL;
  c->mdt = mask ? mask->dtype : AD_BOOL;
  c->nbatch = nd - 2;
  c->bshape = q->shape;
  c->mstrides = mask ? mask->strides : NULL;
  c->scale = scale;
  c->causal = causal;
}

/* Slices in parallel when there are enough of them; otherwise serial slices
 * with threaded BLAS and threaded row loops. */
static bool slice_parallel(const attn_ctx *c) {
  return c->B > 1 && c->B >= omp_get_max_threads() && c->B * c->Lq * c->Lk > 4096;
}

ad_status ad_cpu_attention_fwd(ad_tensor *out, ad_tensor *lse, const ad_tensor *q, const ad_tensor *k,
                               const ad_tensor *v, const ad_tensor *mask, double scale, bool is_causal) {
  attn_ctx c;
  init_ctx(&c, q, k, v, mask, scale, is_causal);
  const int64_t es = c.f64 ? 8 : 4;
  char *po = ad_data(out);
  void *pl = lse ? ad_data(lse) : NULL;
  const bool spar = slice_parallel(&c);
  const bool rpar = !spar && c.Lq > 1 && c.Lq * c.Lk > AD_OMP_MIN;
  if (c.Lk == 0) {  /* no keys: softmax over nothing; define the output as zeros */
    for (int64_t i = 0; i < c.B * c.Lq * c.Dv; i++) stv(po, i, 0.0, c.f64);
    if (pl) for (int64_t i = 0; i < c.B * c.Lq; i++) stv(pl, i, -INFINITY, c.f64);
    return AD_OK;
  }
  int failed = 0;
  #pragma omp parallel if (spar)
  {
    void *S = malloc((size_t)(c.Lq * c.Lk) * es + 1);
    if (!S) {
      #pragma omp atomic write
      failed = 1;
    }
    #pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < c.B; b++) {
      if (!S) continue;
      int64_t mb = c.mask ? mask_base(&c, b) : 0;
      gemm(c.f64, false, true, c.Lq, c.Lk, c.D, c.scale, c.q + b * c.Lq * c.D * es, c.D,
           c.k + b * c.Lk * c.D * es, c.D, 0.0, S, c.Lk);
      if (rpar) {
        #pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < c.Lq; i++) softmax_rows(&c, S, pl, b, mb, i, i + 1);
      } else {
        softmax_rows(&c, S, pl, b, mb, 0, c.Lq);
      }
      gemm(c.f64, false, false, c.Lq, c.Dv, c.Lk, 1.0, S, c.Lk, c.v + b * c.Lk * c.Dv * es, c.Dv, 0.0,
           po + b * c.Lq * c.Dv * es, c.Dv);
    }
    free(S);
  }
  if (failed) return AD_FAIL(AD_ENOMEM, "scaled_dot_product_attention: out of memory for a %lld x %lld score buffer",
                             (long long)c.Lq, (long long)c.Lk);
  return AD_OK;
}

ad_status ad_cpu_attention_bwd(ad_tensor *dq, ad_tensor *dk, ad_tensor *dv, ad_tensor *dmask,
                               const ad_tensor *dout, const ad_tensor *q, const ad_tensor *k,
                               const ad_tensor *v, const ad_tensor *mask, const ad_tensor *lse,
                               double scale, bool is_causal) {
  attn_ctx c;
  init_ctx(&c, q, k, v, mask, scale, is_causal);
  const int64_t es = c.f64 ? 8 : 4;
  const char *pg = ad_data(dout);
  const void *pl = ad_data(lse);
  char *pdq = dq ? ad_data(dq) : NULL, *pdk = dk ? ad_data(dk) : NULL, *pdv = dv ? ad_data(dv) : NULL;
  char *pdm = dmask ? ad_data(dmask) : NULL;
  if (c.Lk == 0) {  /* the output was constant zeros */
    if (pdq) for (int64_t i = 0; i < c.B * c.Lq * c.D; i++) stv(pdq, i, 0.0, c.f64);
    return AD_OK;
  }
  const bool spar = slice_parallel(&c);
  const bool rpar = !spar && c.Lq > 1 && c.Lq * c.Lk > AD_OMP_MIN;
  int failed = 0;
  #pragma omp parallel if (spar)
  {
    char *P = malloc((size_t)(2 * c.Lq * c.Lk) * es + 1);
    if (!P) {
      #pragma omp atomic write
      failed = 1;
    }
    char *dP = P ? P + c.Lq * c.Lk * es : NULL;
    #pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < c.B; b++) {
      if (!P) continue;
      int64_t mb = c.mask ? mask_base(&c, b) : 0;
      const char *qb = c.q + b * c.Lq * c.D * es, *kb = c.k + b * c.Lk * c.D * es;
      const char *vb = c.v + b * c.Lk * c.Dv * es, *gb = pg + b * c.Lq * c.Dv * es;
      gemm(c.f64, false, true, c.Lq, c.Lk, c.D, c.scale, qb, c.D, kb, c.D, 0.0, P, c.Lk);
      if (rpar) {
        #pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < c.Lq; i++) prob_rows(&c, P, pl, b, mb, i, i + 1);
      } else {
        prob_rows(&c, P, pl, b, mb, 0, c.Lq);
      }
      if (pdv) gemm(c.f64, true, false, c.Lk, c.Dv, c.Lq, 1.0, P, c.Lk, gb, c.Dv, 0.0, pdv + b * c.Lk * c.Dv * es, c.Dv);
      if (!pdq && !pdk && !pdm) continue;
      gemm(c.f64, false, true, c.Lq, c.Lk, c.Dv, 1.0, gb, c.Dv, vb, c.Dv, 0.0, dP, c.Lk);
      if (rpar) {
        #pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < c.Lq; i++) ds_rows(&c, P, dP, i, i + 1);
      } else {
        ds_rows(&c, P, dP, 0, c.Lq);
      }
      if (pdm) memcpy(pdm + b * c.Lq * c.Lk * es, dP, (size_t)(c.Lq * c.Lk * es));
      if (pdq) gemm(c.f64, false, false, c.Lq, c.D, c.Lk, c.scale, dP, c.Lk, kb, c.D, 0.0, pdq + b * c.Lq * c.D * es, c.D);
      if (pdk) gemm(c.f64, true, false, c.Lk, c.D, c.Lq, c.scale, dP, c.Lk, qb, c.D, 0.0, pdk + b * c.Lk * c.D * es, c.D);
    }
    free(P);
  }
  if (failed) return AD_FAIL(AD_ENOMEM, "scaled_dot_product_attention backward: out of memory for %lld x %lld buffers",
                             (long long)c.Lq, (long long)c.Lk);
  return AD_OK;
}
