/* cpu_norm.c: CPU kernels for group, batch and layer normalisation.
 *
 * Every kernel works on contiguous f32 or f64 buffers (the front ends convert
 * f16/bf16 to f32) and accumulates statistics in double, so f32 GroupNorm
 * over a large group keeps ~1e-7 relative accuracy. The saved statistics
 * (mean, rstd) are f64 whatever the data's dtype: an f32 mean would be off by
 * half an ulp of |mean|, which is a large error in xhat once |mean| >> std. Each kernel body is an
 * always-inlined worker taking `f64` as a constant: the compiler emits one
 * specialised copy per dtype without macros.
 *
 * GroupNorm is hot in the ADM U-Net: forward and backward both run one
 * OpenMP iteration per (n, group) and touch each element twice (stats, then
 * apply) — the backward gathers the per-channel sums and computes dx in the
 * same iteration; dw/db are reduced over n afterwards from the per-(n, c)
 * sums. */
#include <math.h>
#include <stdlib.h>
#include <omp.h>
#include "../backend.h"
#include "../backend_nn.h"
#include "cpu_iter.h"

#define NORM_INLINE static inline __attribute__((always_inline))

NORM_INLINE double ldv(const void *p, int64_t i, int f64) {
  return f64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}
NORM_INLINE void stv(void *p, int64_t i, double v, int f64) {
  if (f64) ((double *)p)[i] = v;
  else ((float *)p)[i] = (float)v;
}
/* optional tensors: NULL w means 1, NULL b means 0 */
static const void *opt_data(const ad_tensor *t) { return t ? ad_data(t) : NULL; }

/* sum of p[0..n) and the sum of squared deviations from mu */
NORM_INLINE double sum_span(const void *p, int64_t n, int f64) {
  double s = 0;
  if (f64) {
    const double *x = p;
    #pragma omp simd reduction(+:s)
    for (int64_t i = 0; i < n; i++) s += x[i];
  } else {
    const float *x = p;
    #pragma omp simd reduction(+:s)
    for (int64_t i = 0; i < n; i++) s += (double)x[i];
  }
  return s;
}
NORM_INLINE double sqdev_span(const void *p, int64_t n, double mu, int f64) {
  double s = 0;
  if (f64) {
    const double *x = p;
    #pragma omp simd reduction(+:s)
    for (int64_t i = 0; i < n; i++) { double d = x[i] - mu; s += d * d; }
  } else {
    const float *x = p;
    #pragma omp simd reduction(+:s)
    for (int64_t i = 0; i < n; i++) { double d = (double)x[i] - mu; s += d * d; }
  }
  return s;
}
/* y = (x - mu) * a + c over a span. Subtracting the mean before scaling keeps
 * f32 exact where it matters: with |mean| >> std, x*a + (c - mu*a) would
 * cancel two large numbers. mu is split into an f32 head and tail, so x - head
 * is exact (Sterbenz) and the tail corrects the rest, all in f32 SIMD. */
NORM_INLINE void affine_span(void *y, const void *x, int64_t n, double mu, double a, double c, int f64) {
  if (f64) {
    double *py = y; const double *px = x;
    #pragma omp simd
    for (int64_t i = 0; i < n; i++) py[i] = (px[i] - mu) * a + c;
  } else {
    float *py = y; const float *px = x;
    float mh = (float)mu, ml = (float)(mu - (double)mh), af = (float)a, cf = (float)c;
    #pragma omp simd
    for (int64_t i = 0; i < n; i++) py[i] = ((px[i] - mh) - ml) * af + cf;
  }
}
/* sum dy and sum dy*x over a span */
NORM_INLINE void dsum_span(const void *dy, const void *x, int64_t n, double *sdy, double *sdyx, int f64) {
  double a = 0, b = 0;
  if (f64) {
    const double *g = dy, *px = x;
    #pragma omp simd reduction(+:a, b)
    for (int64_t i = 0; i < n; i++) { a += g[i]; b += g[i] * px[i]; }
  } else {
    const float *g = dy, *px = x;
    #pragma omp simd reduction(+:a, b)
    for (int64_t i = 0; i < n; i++) { a += (double)g[i]; b += (double)g[i] * (double)px[i]; }
  }
  *sdy = a;
  *sdyx = b;
}
/* dx = dy * a + (x - mu) * b + c over a span (mu split as in affine_span) */
NORM_INLINE void dx_span(void *dx, const void *dy, const void *x, int64_t n, double mu, double a, double b, double c,
                         int f64) {
  if (f64) {
    double *pd = dx; const double *g = dy, *px = x;
    #pragma omp simd
    for (int64_t i = 0; i < n; i++) pd[i] = g[i] * a + (px[i] - mu) * b + c;
  } else {
    float *pd = dx; const float *g = dy, *px = x;
    float mh = (float)mu, ml = (float)(mu - (double)mh), af = (float)a, bf = (float)b, cf = (float)c;
    #pragma omp simd
    for (int64_t i = 0; i < n; i++) pd[i] = g[i] * af + ((px[i] - mh) - ml) * bf + cf;
  }
}

/* ======================================================================= group norm */

NORM_INLINE void gn_fwd(ad_tensor *y, ad_tensor *mean, ad_tensor *rstd, const ad_tensor *x, const ad_tensor *w,
                        const ad_tensor *b, int64_t N, int64_t C, int64_t S, int64_t G, double eps, int f64) {
  const int64_t Cg = C / G, D = Cg * S, es = f64 ? 8 : 4;
  const char *px = ad_data(x);
  char *py = ad_data(y);
  const void *pw = opt_data(w), *pb = opt_data(b);
  void *pm = ad_data(mean), *pr = ad_data(rstd);
  #pragma omp parallel for schedule(static) if (N * G > 1 && N * C * S > AD_OMP_MIN)
  for (int64_t ng = 0; ng < N * G; ng++) {
    int64_t n = ng / G, g = ng % G;
    int64_t base = (n * C + g * Cg) * S;
    const char *xs = px + base * es;
    double mu = D ? sum_span(xs, D, f64) / (double)D : 0.0;
    double var = D ? sqdev_span(xs, D, mu, f64) / (double)D : 0.0;
    double rs = 1.0 / sqrt(var + eps);
    ((double *)pm)[ng] = mu;
    ((double *)pr)[ng] = rs;
    for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) {
      double wc = pw ? ldv(pw, c, f64) : 1.0, bc = pb ? ldv(pb, c, f64) : 0.0;
      double a = rs * wc;
      int64_t off = (n * C + c) * S * es;
      affine_span(py + off, px + off, S, mu, a, bc, f64);
    }
  }
}

ad_status ad_cpu_group_norm_fwd(ad_tensor *y, ad_tensor *mean, ad_tensor *rstd, const ad_tensor *x,
                                const ad_tensor *w, const ad_tensor *b, int64_t N, int64_t C, int64_t S,
                                int64_t G, double eps) {
  if (x->dtype == AD_F64) gn_fwd(y, mean, rstd, x, w, b, N, C, S, G, eps, 1);
  else gn_fwd(y, mean, rstd, x, w, b, N, C, S, G, eps, 0);
  return AD_OK;
}

/* Per group with xhat = (x - mu) * rs, dxhat = dy * w_c, D elements:
 *   dx = rs * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
 * With A = sum_c w_c sum(dy), B = sum_c w_c sum(dy * x) this is
 *   dx = dy * (rs w_c) + (x - mu) * k - rs A / D,  k = (A mu - B) rs^3 / D,
 * so one pass gathers the channel sums and one pass writes dx. */
NORM_INLINE void gn_bwd(ad_tensor *dx, double *sdy, double *sdyx, const ad_tensor *dy, const ad_tensor *x,
                        const ad_tensor *mean, const ad_tensor *rstd, const ad_tensor *w,
                        int64_t N, int64_t C, int64_t S, int64_t G, int f64) {
  const int64_t Cg = C / G, D = Cg * S, es = f64 ? 8 : 4;
  const char *px = ad_data(x), *pg = ad_data(dy);
  char *pdx = dx ? ad_data(dx) : NULL;
  const void *pw = opt_data(w), *pm = ad_data(mean), *pr = ad_data(rstd);
  #pragma omp parallel for schedule(static) if (N * G > 1 && N * C * S > AD_OMP_MIN)
  for (int64_t ng = 0; ng < N * G; ng++) {
    int64_t n = ng / G, g = ng % G;
    double mu = ((const double *)pm)[ng], rs = ((const double *)pr)[ng];
    double A = 0, B = 0;
    for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) {
      int64_t off = (n * C + c) * S * es;
      double a, bsum;
      dsum_span(pg + off, px + off, S, &a, &bsum, f64);
      sdy[n * C + c] = a;
      sdyx[n * C + c] = bsum;
      double wc = pw ? ldv(pw, c, f64) : 1.0;
      A += wc * a;
      B += wc * bsum;
    }
    if (!pdx || D == 0) continue;
    double k = (A * mu - B) * rs * rs * rs / (double)D;
    double c0 = -rs * A / (double)D;
    for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) {
      int64_t off = (n * C + c) * S * es;
      double wc = pw ? ldv(pw, c, f64) : 1.0;
      dx_span(pdx + off, pg + off, px + off, S, mu, rs * wc, k, c0, f64);
    }
  }
}

ad_status ad_cpu_group_norm_bwd(ad_tensor *dx, ad_tensor *dw, ad_tensor *db, const ad_tensor *dy,
                                const ad_tensor *x, const ad_tensor *mean, const ad_tensor *rstd,
                                const ad_tensor *w, int64_t N, int64_t C, int64_t S, int64_t G) {
  int f64 = x->dtype == AD_F64;
  size_t nc = N * C > 0 ? (size_t)(N * C) : 1;
  double *sdy = malloc(2 * nc * sizeof *sdy);
  if (!sdy) return AD_FAIL(AD_ENOMEM, "group_norm backward: out of memory for %zu channel sums", 2 * nc);
  double *sdyx = sdy + nc;
  if (f64) gn_bwd(dx, sdy, sdyx, dy, x, mean, rstd, w, N, C, S, G, 1);
  else gn_bwd(dx, sdy, sdyx, dy, x, mean, rstd, w, N, C, S, G, 0);
  if (dw || db) {
    const int64_t Cg = C / G;
    const void *pm = ad_data(mean), *pr = ad_data(rstd);
    void *pdw = dw ? ad_data(dw) : NULL, *pdb = db ? ad_data(db) : NULL;
    for (int64_t c = 0; c < C; c++) {
      double aw = 0, ab = 0;
      for (int64_t n = 0; n < N; n++) {
        int64_t ng = n * G + c / Cg;
        double mu = ((const double *)pm)[ng], rs = ((const double *)pr)[ng];
        aw += (sdyx[n * C + c] - mu * sdy[n * C + c]) * rs;
        ab += sdy[n * C + c];
      }
      if (pdw) stv(pdw, c, aw, f64);
      if (pdb) stv(pdb, c, ab, f64);
    }
  }
  free(sdy);
  return AD_OK;
}

/* ======================================================================= batch norm */

NORM_INLINE void bn_fwd(ad_tensor *y, ad_tensor *smean, ad_tensor *srstd, const ad_tensor *x, const ad_tensor *w,
                        const ad_tensor *b, ad_tensor *rmean, ad_tensor *rvar, int64_t N, int64_t C, int64_t S,
                        bool training, double momentum, double eps, int f64) {
  const int64_t es = f64 ? 8 : 4, M = N * S;
  const char *px = ad_data(x);
  char *py = ad_data(y);
  const void *pw = opt_data(w), *pb = opt_data(b);
  void *psm = ad_data(smean), *psr = ad_data(srstd);
  void *prm = rmean ? ad_data(rmean) : NULL, *prv = rvar ? ad_data(rvar) : NULL;
  #pragma omp parallel for schedule(static) if (C > 1 && N * C * S > AD_OMP_MIN)
  for (int64_t c = 0; c < C; c++) {
    double mu, rs;
    if (training) {
      double s = 0;
      for (int64_t n = 0; n < N; n++) s += sum_span(px + (n * C + c) * S * es, S, f64);
      mu = s / (double)M;
      double q = 0;
      for (int64_t n = 0; n < N; n++) q += sqdev_span(px + (n * C + c) * S * es, S, mu, f64);
      double var = q / (double)M;
      rs = 1.0 / sqrt(var + eps);
      if (prm) stv(prm, c, (1.0 - momentum) * ldv(prm, c, f64) + momentum * mu, f64);
      if (prv) {
        double unbiased = M > 1 ? q / (double)(M - 1) : var;
        stv(prv, c, (1.0 - momentum) * ldv(prv, c, f64) + momentum * unbiased, f64);
      }
    } else {
      mu = ldv(prm, c, f64);
      rs = 1.0 / sqrt(ldv(prv, c, f64) + eps);
    }
    ((double *)psm)[c] = mu;
    ((double *)psr)[c] = rs;
    double wc = pw ? ldv(pw, c, f64) : 1.0, bc = pb ? ldv(pb, c, f64) : 0.0;
    double a = rs * wc;
    for (int64_t n = 0; n < N; n++) {
      int64_t off = (n * C + c) * S * es;
      affine_span(py + off, px + off, S, mu, a, bc, f64);
    }
  }
}

ad_status ad_cpu_batch_norm_fwd(ad_tensor *y, ad_tensor *save_mean, ad_tensor *save_rstd, const ad_tensor *x,
                                const ad_tensor *w, const ad_tensor *b, ad_tensor *running_mean,
                                ad_tensor *running_var, int64_t N, int64_t C, int64_t S, bool training,
                                double momentum, double eps) {
  if (!training && (!running_mean || !running_var))
    return AD_FAIL(AD_EINVAL, "batch_norm: running_mean and running_var are required in evaluation mode");
  if (x->dtype == AD_F64)
    bn_fwd(y, save_mean, save_rstd, x, w, b, running_mean, running_var, N, C, S, training, momentum, eps, 1);
  else
    bn_fwd(y, save_mean, save_rstd, x, w, b, running_mean, running_var, N, C, S, training, momentum, eps, 0);
  return AD_OK;
}

/* training: dx = w rs (dy - mean(dy) - xhat mean(dy xhat)); eval: dx = w rs dy
 * (the statistics are constants there). dw = sum dy xhat, db = sum dy. */
NORM_INLINE void bn_bwd(ad_tensor *dx, ad_tensor *dw, ad_tensor *db, const ad_tensor *dy, const ad_tensor *x,
                        const ad_tensor *mean, const ad_tensor *rstd, const ad_tensor *w, int64_t N, int64_t C,
                        int64_t S, bool training, int f64) {
  const int64_t es = f64 ? 8 : 4, M = N * S;
  const char *px = ad_data(x), *pg = ad_data(dy);
  char *pdx = dx ? ad_data(dx) : NULL;
  const void *pw = opt_data(w), *pm = ad_data(mean), *pr = ad_data(rstd);
  void *pdw = dw ? ad_data(dw) : NULL, *pdb = db ? ad_data(db) : NULL;
  #pragma omp parallel for schedule(static) if (C > 1 && N * C * S > AD_OMP_MIN)
  for (int64_t c = 0; c < C; c++) {
    double mu = ((const double *)pm)[c], rs = ((const double *)pr)[c];
    double sdy = 0, sdyx = 0;
    for (int64_t n = 0; n < N; n++) {
      int64_t off = (n * C + c) * S * es;
      double a, bsum;
      dsum_span(pg + off, px + off, S, &a, &bsum, f64);
      sdy += a;
      sdyx += bsum;
    }
    double sdyxhat = (sdyx - mu * sdy) * rs;
    if (pdw) stv(pdw, c, sdyxhat, f64);
    if (pdb) stv(pdb, c, sdy, f64);
    if (!pdx) continue;
    double wc = pw ? ldv(pw, c, f64) : 1.0;
    double a = rs * wc, k = 0, c0 = 0;
    if (training && M > 0) {
      /* dx = a (dy - sdy/M - (x - mu) rs sdyxhat / M) */
      k = -a * rs * sdyxhat / (double)M;
      c0 = -a * sdy / (double)M;
    }
    for (int64_t n = 0; n < N; n++) {
      int64_t off = (n * C + c) * S * es;
      dx_span(pdx + off, pg + off, px + off, S, mu, a, k, c0, f64);
    }
  }
}

ad_status ad_cpu_batch_norm_bwd(ad_tensor *dx, ad_tensor *dw, ad_tensor *db, const ad_tensor *dy,
                                const ad_tensor *x, const ad_tensor *mean, const ad_tensor *rstd,
                                const ad_tensor *w, int64_t N, int64_t C, int64_t S, bool training) {
  if (x->dtype == AD_F64) bn_bwd(dx, dw, db, dy, x, mean, rstd, w, N, C, S, training, 1);
  else bn_bwd(dx, dw, db, dy, x, mean, rstd, w, N, C, S, training, 0);
  return AD_OK;
}

/* ======================================================================= layer norm */

NORM_INLINE void ln_fwd(ad_tensor *y, ad_tensor *mean, ad_tensor *rstd, const ad_tensor *x, const ad_tensor *w,
                        const ad_tensor *b, int64_t M, int64_t D, double eps, int f64) {
  const int64_t es = f64 ? 8 : 4;
  const char *px = ad_data(x);
  char *py = ad_data(y);
  const void *pw = opt_data(w), *pb = opt_data(b);
  void *pm = ad_data(mean), *pr = ad_data(rstd);
  #pragma omp parallel for schedule(static) if (M > 1 && M * D > AD_OMP_MIN)
  for (int64_t m = 0; m < M; m++) {
    const char *xs = px + m * D * es;
    char *ys = py + m * D * es;
    double mu = D ? sum_span(xs, D, f64) / (double)D : 0.0;
    double var = D ? sqdev_span(xs, D, mu, f64) / (double)D : 0.0;
    double rs = 1.0 / sqrt(var + eps);
    ((double *)pm)[m] = mu;
    ((double *)pr)[m] = rs;
    if (!pw && !pb) { affine_span(ys, xs, D, mu, rs, 0.0, f64); continue; }
    for (int64_t d = 0; d < D; d++) {
      double xh = (ldv(xs, d, f64) - mu) * rs;
      stv(ys, d, xh * (pw ? ldv(pw, d, f64) : 1.0) + (pb ? ldv(pb, d, f64) : 0.0), f64);
    }
  }
}

ad_status ad_cpu_layer_norm_fwd(ad_tensor *y, ad_tensor *mean, ad_tensor *rstd, const ad_tensor *x,
                                const ad_tensor *w, const ad_tensor *b, int64_t M, int64_t D, double eps) {
  if (x->dtype == AD_F64) ln_fwd(y, mean, rstd, x, w, b, M, D, eps, 1);
  else ln_fwd(y, mean, rstd, x, w, b, M, D, eps, 0);
  return AD_OK;
}

/* Per row: dxhat = dy w; dx = rs (dxhat - mean(dxhat) - xhat mean(dxhat xhat)).
 * dw and db sum over rows: each thread accumulates its own partial row of
 * sums, added up at the end, so rows stay the unit of parallel work. */
NORM_INLINE ad_status ln_bwd(ad_tensor *dx, ad_tensor *dw, ad_tensor *db, const ad_tensor *dy, const ad_tensor *x,
                             const ad_tensor *mean, const ad_tensor *rstd, const ad_tensor *w, int64_t M, int64_t D,
                             int f64) {
  const int64_t es = f64 ? 8 : 4;
  const char *px = ad_data(x), *pg = ad_data(dy);
  char *pdx = dx ? ad_data(dx) : NULL;
  const void *pw = opt_data(w), *pm = ad_data(mean), *pr = ad_data(rstd);
  bool par = M > 1 && M * D > AD_OMP_MIN;
  int nt = par ? omp_get_max_threads() : 1;
  bool want_wb = dw || db;
  double *part = NULL;
  if (want_wb) {
    part = calloc((size_t)nt * 2 * (size_t)(D ? D : 1), sizeof *part);
    if (!part) return AD_FAIL(AD_ENOMEM, "layer_norm backward: out of memory");
  }
  #pragma omp parallel num_threads(nt) if (par)
  {
    int t = omp_get_thread_num();
    double *pdw = part ? part + (size_t)t * 2 * D : NULL, *pdb = pdw ? pdw + D : NULL;
    #pragma omp for schedule(static)
    for (int64_t m = 0; m < M; m++) {
      const char *xs = px + m * D * es, *gs = pg + m * D * es;
      double mu = ((const double *)pm)[m], rs = ((const double *)pr)[m];
      double s1 = 0, s2 = 0;
      for (int64_t d = 0; d < D; d++) {
        double g = ldv(gs, d, f64), xh = (ldv(xs, d, f64) - mu) * rs;
        double gx = g * (pw ? ldv(pw, d, f64) : 1.0);
        s1 += gx;
        s2 += gx * xh;
        if (pdw) { pdw[d] += g * xh; pdb[d] += g; }
      }
      if (!pdx || D == 0) continue;
      s1 /= (double)D;
      s2 /= (double)D;
      char *ds = pdx + m * D * es;
      for (int64_t d = 0; d < D; d++) {
        double g = ldv(gs, d, f64), xh = (ldv(xs, d, f64) - mu) * rs;
        double gx = g * (pw ? ldv(pw, d, f64) : 1.0);
        stv(ds, d, rs * (gx - s1 - xh * s2), f64);
      }
    }
  }
  if (want_wb) {
    void *odw = dw ? ad_data(dw) : NULL, *odb = db ? ad_data(db) : NULL;
    for (int64_t d = 0; d < D; d++) {
      double aw = 0, ab = 0;
      for (int t = 0; t < nt; t++) { aw += part[(size_t)t * 2 * D + d]; ab += part[(size_t)t * 2 * D + D + d]; }
      if (odw) stv(odw, d, aw, f64);
      if (odb) stv(odb, d, ab, f64);
    }
    free(part);
  }
  return AD_OK;
}

ad_status ad_cpu_layer_norm_bwd(ad_tensor *dx, ad_tensor *dw, ad_tensor *db, const ad_tensor *dy,
                                const ad_tensor *x, const ad_tensor *mean, const ad_tensor *rstd,
                                const ad_tensor *w, int64_t M, int64_t D) {
  if (x->dtype == AD_F64) return ln_bwd(dx, dw, db, dy, x, mean, rstd, w, M, D, 1);
  return ln_bwd(dx, dw, db, dy, x, mean, rstd, w, M, D, 0);
}
