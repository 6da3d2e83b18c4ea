/* cpu_softmax.c: CPU softmax / log_softmax along one dim, forward and
 * backward, on contiguous f32/f64 tensors viewed as (outer, L, inner).
 *
 * Max-subtracted for stability; sums accumulate in double. When the softmax
 * dim is innermost (inner == 1, the attention and classifier case) each row
 * is a contiguous span. Otherwise the L elements of one column are `inner`
 * apart, so columns are processed in blocks of SM_BLOCK adjacent ones: each
 * pass over L then reads SM_BLOCK contiguous values per step instead of one
 * per cache line.
 *
 * no-trapping-math (as in cpu_elementwise.c) lets gcc if-convert the clamps
 * of mathinl.h's ad_fast_expf, so the exp loops vectorise. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include <math.h>
#include "../backend.h"
#include "../backend_nn.h"
#include "../mathinl.h"
#include "cpu_iter.h"

#define SM_INLINE static inline __attribute__((always_inline))
#define SM_BLOCK 16

SM_INLINE double ldv(const void *p, int64_t i, int f64) {
  return f64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}
SM_INLINE void stv(void *p, int64_t i, double v, int f64) {
  if (f64) ((double *)p)[i] = v;
  else ((float *)p)[i] = (float)v;
}

/* vexpf: the shared vectorisable f32 exp of mathinl.h */
#define vexpf ad_fast_expf

/* exp in the data's precision: the f32 one is the SIMD-friendly vexpf */
SM_INLINE double expv(double v, int f64) { return f64 ? exp(v) : (double)vexpf((float)v); }

/* Blocks of 256: the exps and a float partial sum vectorize together (mixing
 * f32 lanes with an f64 accumulator would not), and the f64 total over blocks
 * keeps long rows accurate. */
double ad_cpu_exp_shift_f32(float *y, const float *x, int64_t n, float shift) {
  double total = 0;
  for (int64_t i0 = 0; i0 < n; i0 += 256) {
    int64_t i1 = i0 + 256 < n ? i0 + 256 : n;
    float s = 0;
    #pragma omp simd reduction(+:s)
    for (int64_t i = i0; i < i1; i++) {
      float e = vexpf(x[i] - shift);
      y[i] = e;
      s += e;
    }
    total += s;
  }
  return total;
}

/* one contiguous row of L */
SM_INLINE void row_fwd(void *y, const void *x, int64_t L, bool lg, int f64) {
  if (!f64) {
    const float *px = x;
    float *py = y, mx = -INFINITY;
    #pragma omp simd reduction(max:mx)
    for (int64_t l = 0; l < L; l++) mx = px[l] > mx ? px[l] : mx;
    double s = ad_cpu_exp_shift_f32(py, px, L, mx);
    if (lg) {
      float lse = (float)((double)mx + log(s));
      #pragma omp simd
      for (int64_t l = 0; l < L; l++) py[l] = px[l] - lse;
    } else {
      float inv = (float)(1.0 / s);
      #pragma omp simd
      for (int64_t l = 0; l < L; l++) py[l] *= inv;
    }
    return;
  }
  double mx = -INFINITY;
  for (int64_t l = 0; l < L; l++) { double v = ldv(x, l, f64); mx = v > mx ? v : mx; }
  double s = 0;
  if (lg) {
    for (int64_t l = 0; l < L; l++) s += expv(ldv(x, l, f64) - mx, f64);
    double lse = mx + log(s);
    for (int64_t l = 0; l < L; l++) stv(y, l, ldv(x, l, f64) - lse, f64);
  } else {
    for (int64_t l = 0; l < L; l++) { double e = expv(ldv(x, l, f64) - mx, f64); stv(y, l, e, f64); s += e; }
    double inv = 1.0 / s;
    for (int64_t l = 0; l < L; l++) stv(y, l, ldv(y, l, f64) * inv, f64);
  }
}

/* a block of nb adjacent columns, element (l, j) at l*inner + j */
SM_INLINE void cols_fwd(void *y, const void *x, int64_t L, int64_t inner, int nb, bool lg, int f64) {
  double mx[SM_BLOCK], s[SM_BLOCK];
  for (int j = 0; j < nb; j++) { mx[j] = -INFINITY; s[j] = 0; }
  for (int64_t l = 0; l < L; l++)
    for (int j = 0; j < nb; j++) { double v = ldv(x, l * inner + j, f64); mx[j] = v > mx[j] ? v : mx[j]; }
  for (int64_t l = 0; l < L; l++)
    for (int j = 0; j < nb; j++) {
      double e = expv(ldv(x, l * inner + j, f64) - mx[j], f64);
      s[j] += e;
      if (!lg) stv(y, l * inner + j, e, f64);
    }
  for (int j = 0; j < nb; j++) s[j] = lg ? mx[j] + log(s[j]) : 1.0 / s[j];
  for (int64_t l = 0; l < L; l++)
    for (int j = 0; j < nb; j++) {
      int64_t i = l * inner + j;
      if (lg) stv(y, i, ldv(x, i, f64) - s[j], f64);
      else stv(y, i, ldv(y, i, f64) * s[j], f64);
    }
}

/* softmax: dx = y (dy - sum(dy y)); log_softmax: dx = dy - exp(y) sum(dy) */
SM_INLINE void cols_bwd(void *dx, const void *dy, const void *y, int64_t L, int64_t inner, int nb, bool lg,
                        int f64) {
  double s[SM_BLOCK];
  for (int j = 0; j < nb; j++) s[j] = 0;
  for (int64_t l = 0; l < L; l++)
    for (int j = 0; j < nb; j++) {
      int64_t i = l * inner + j;
      s[j] += lg ? ldv(dy, i, f64) : ldv(dy, i, f64) * ldv(y, i, f64);
    }
  for (int64_t l = 0; l < L; l++)
    for (int j = 0; j < nb; j++) {
      int64_t i = l * inner + j;
      double g = ldv(dy, i, f64), yv = ldv(y, i, f64);
      stv(dx, i, lg ? g - expv(yv, f64) * s[j] : yv * (g - s[j]), f64);
    }
}

SM_INLINE void sm_fwd(ad_tensor *y, const ad_tensor *x, int64_t outer, int64_t L, int64_t inner, bool lg,
                      int f64) {
  const int64_t es = f64 ? 8 : 4;
  const char *px = ad_data(x);
  char *py = ad_data(y);
  if (inner == 1) {
    #pragma omp parallel for schedule(static) if (outer > 1 && outer * L > AD_OMP_MIN / 4)
    for (int64_t o = 0; o < outer; o++) row_fwd(py + o * L * es, px + o * L * es, L, lg, f64);
    return;
  }
  const int64_t nblk = (inner + SM_BLOCK - 1) / SM_BLOCK;
  #pragma omp parallel for schedule(static) if (outer * nblk > 1 && outer * L * inner > AD_OMP_MIN / 4)
  for (int64_t t = 0; t < outer * nblk; t++) {
    int64_t o = t / nblk, j0 = (t % nblk) * SM_BLOCK;
    int nb = (int)(inner - j0 < SM_BLOCK ? inner - j0 : SM_BLOCK);
    int64_t off = (o * L * inner + j0) * es;
    cols_fwd(py + off, px + off, L, inner, nb, lg, f64);
  }
}

ad_status ad_cpu_softmax_fwd(ad_tensor *y, const ad_tensor *x, int64_t outer, int64_t L, int64_t inner, bool log) {
  if (x->dtype == AD_F64) sm_fwd(y, x, outer, L, inner, log, 1);
  else sm_fwd(y, x, outer, L, inner, log, 0);
  return AD_OK;
}

SM_INLINE void sm_bwd(ad_tensor *dx, const ad_tensor *dy, const ad_tensor *y, int64_t outer, int64_t L,
                      int64_t inner, bool lg, int f64) {
  const int64_t es = f64 ? 8 : 4;
  const char *pg = ad_data(dy), *py = ad_data(y);
  char *pd = ad_data(dx);
  if (inner == 1 && !f64) {  /* contiguous f32 rows: the common case, in SIMD */
    #pragma omp parallel for schedule(static) if (outer > 1 && outer * L > AD_OMP_MIN / 4)
    for (int64_t o = 0; o < outer; o++) {
      const float *g = (const float *)pg + o * L, *yr = (const float *)py + o * L;
      float *d = (float *)pd + o * L;
      double s = 0;
      for (int64_t l0 = 0; l0 < L; l0 += 256) {
        int64_t l1 = l0 + 256 < L ? l0 + 256 : L;
        float part = 0;
        if (lg) {
          #pragma omp simd reduction(+:part)
          for (int64_t l = l0; l < l1; l++) part += g[l];
        } else {
          #pragma omp simd reduction(+:part)
          for (int64_t l = l0; l < l1; l++) part += g[l] * yr[l];
        }
        s += part;
      }
      float sf = (float)s;
      if (lg) {
        #pragma omp simd
        for (int64_t l = 0; l < L; l++) d[l] = g[l] - vexpf(yr[l]) * sf;
      } else {
        #pragma omp simd
        for (int64_t l = 0; l < L; l++) d[l] = yr[l] * (g[l] - sf);
      }
    }
    return;
  }
  /* otherwise blocks of columns; inner == 1 (f64) is one-column blocks */
  const int64_t bw = inner == 1 ? 1 : SM_BLOCK;
  const int64_t nblk = (inner + bw - 1) / bw;
  #pragma omp parallel for schedule(static) if (outer * nblk > 1 && outer * L * inner > AD_OMP_MIN / 4)
  for (int64_t t = 0; t < outer * nblk; t++) {
    int64_t o = t / nblk, j0 = (t % nblk) * bw;
    int nb = (int)(inner - j0 < bw ? inner - j0 : bw);
    int64_t off = (o * L * inner + j0) * es;
    cols_bwd(pd + off, pg + off, py + off, L, inner, nb, lg, f64);
  }
}

ad_status ad_cpu_softmax_bwd(ad_tensor *dx, const ad_tensor *dy, const ad_tensor *y, int64_t outer, int64_t L,
                             int64_t inner, bool log) {
  if (y->dtype == AD_F64) sm_bwd(dx, dy, y, outer, L, inner, log, 1);
  else sm_bwd(dx, dy, y, outer, L, inner, log, 0);
  return AD_OK;
}
