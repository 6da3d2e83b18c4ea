/* cpu_reduce.c: the CPU kernels of the reduction family (the struct in
 * backend_reduce.h). The input is a contiguous (outer, r, inner) block.
 *
 * Two loop shapes cover every op:
 *  - inner == 1: each output reduces a contiguous run of r elements. Runs are
 *    spread over threads; a single long run (a full reduction such as a loss
 *    sum) is itself split across threads and the partial results combined.
 *  - inner > 1: each output is a column of stride inner. Work items are
 *    blocks of RD_BLOCK adjacent columns; the loop walks the r rows and
 *    updates the block's accumulators, so the inner loop is contiguous and
 *    vectorises.
 * Values accumulate in double whatever the element type (f32 sums over a
 * million elements stay accurate). var and logsumexp take two passes (mean,
 * then squared deviations; max, then sum of shifted exponentials) for
 * accuracy and stability. The loop bodies are written once as file-local
 * macros over the element type T and instantiated for float and double.
 *
 * no-trapping-math: as in cpu_elementwise.c, lets gcc if-convert the
 * NaN-aware compares of max/min so those loops vectorise. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "backend_reduce.h"

#define RD_OMP_MIN 32768 /* elements: below this, one thread */
#define RD_BLOCK 256     /* columns per work item when inner > 1 */
#define RD_MAX_THREADS 256

/* the accumulations the ops are built from */
typedef enum {
  P_SUM, P_PROD, P_MAX, P_MIN, P_SUMABS, P_SUMSQ, P_MAXABS, P_MINABS, P_SUMPOW, P_NNZ,
  P_SUMEXP,   /* sum exp(x - aux) */
  P_SUMSQDEV  /* sum (x - aux)^2 */
} rd_prim;

static double rd_identity(rd_prim pr) {
  switch (pr) {
  case P_PROD: return 1.0;
  case P_MAX: return -INFINITY;
  case P_MIN: case P_MINABS: return INFINITY;
  default: return 0.0;
  }
}

/* combine two partial accumulations; max/min keep a NaN */
static double rd_combine(rd_prim pr, double a, double b) {
  switch (pr) {
  case P_PROD: return a * b;
  case P_MAX: case P_MAXABS: return (a != a || a > b) ? a : b;
  case P_MIN: case P_MINABS: return (a != a || a < b) ? a : b;
  default: return a + b;
  }
}

/* ------------------------------------------------------------------------ */
/* contiguous runs                                                            */

/* max/min with a NaN flag kept apart from the comparison, so the loop stays a
 * plain select that vectorises */
#define RD_RUN_BODY(T)                                                                   \
  do {                                                                                   \
    double acc = rd_identity(pr);                                                        \
    int nan = 0;                                                                         \
    switch (pr) {                                                                        \
    case P_SUM:                                                                          \
      _Pragma("omp simd reduction(+:acc)") for (int64_t i = 0; i < n; i++) acc += x[i];  \
      break;                                                                             \
    case P_PROD:                                                                         \
      for (int64_t i = 0; i < n; i++) acc *= x[i];                                       \
      break;                                                                             \
    case P_MAX:                                                                          \
      for (int64_t i = 0; i < n; i++) {                                                  \
        const double v = x[i];                                                           \
        nan |= v != v;                                                                   \
        acc = v > acc ? v : acc;                                                         \
      }                                                                                  \
      break;                                                                             \
    case P_MIN:                                                                          \
      for (int64_t i = 0; i < n; i++) {                                                  \
        const double v = x[i];                                                           \
        nan |= v != v;                                                                   \
        acc = v < acc ? v : acc;                                                         \
      }                                                                                  \
      break;                                                                             \
    case P_MAXABS:                                                                       \
      for (int64_t i = 0; i < n; i++) {                                                  \
        const double v = fabs((double)x[i]);                                             \
        nan |= v != v;                                                                   \
        acc = v > acc ? v : acc;                                                         \
      }                                                                                  \
      break;                                                                             \
    case P_MINABS:                                                                       \
      for (int64_t i = 0; i < n; i++) {                                                  \
        const double v = fabs((double)x[i]);                                             \
        nan |= v != v;                                                                   \
        acc = v < acc ? v : acc;                                                         \
      }                                                                                  \
      break;                                                                             \
    case P_SUMABS:                                                                       \
      _Pragma("omp simd reduction(+:acc)") for (int64_t i = 0; i < n; i++)               \
        acc += fabs((double)x[i]);                                                       \
      break;                                                                             \
    case P_SUMSQ:                                                                        \
      _Pragma("omp simd reduction(+:acc)") for (int64_t i = 0; i < n; i++) {             \
        const double v = x[i];                                                           \
        acc += v * v;                                                                    \
      }                                                                                  \
      break;                                                                             \
    case P_SUMPOW:                                                                       \
      for (int64_t i = 0; i < n; i++) acc += pow(fabs((double)x[i]), p);                 \
      break;                                                                             \
    case P_NNZ:                                                                          \
      _Pragma("omp simd reduction(+:acc)") for (int64_t i = 0; i < n; i++)               \
        acc += x[i] != 0;                                                                \
      break;                                                                             \
    case P_SUMEXP:                                                                       \
      for (int64_t i = 0; i < n; i++) acc += exp((double)x[i] - aux);                    \
      break;                                                                             \
    case P_SUMSQDEV:                                                                     \
      _Pragma("omp simd reduction(+:acc)") for (int64_t i = 0; i < n; i++) {             \
        const double d = (double)x[i] - aux;                                             \
        acc += d * d;                                                                    \
      }                                                                                  \
      break;                                                                             \
    }                                                                                    \
    return nan ? NAN : acc;                                                              \
  } while (0)

static double run_f32(const float *x, int64_t n, rd_prim pr, double aux, double p) { RD_RUN_BODY(float); }
static double run_f64(const double *x, int64_t n, rd_prim pr, double aux, double p) { RD_RUN_BODY(double); }

/* one primitive over a run, split across threads when par */
static double rd_run(const char *x, bool f64, int64_t n, rd_prim pr, double aux, double p, bool par) {
  if (!par) return f64 ? run_f64((const double *)x, n, pr, aux, p) : run_f32((const float *)x, n, pr, aux, p);
  int nt = omp_get_max_threads();
  if (nt > RD_MAX_THREADS) nt = RD_MAX_THREADS;
  double part[RD_MAX_THREADS];
  const int64_t chunk = (n + nt - 1) / nt;
  const size_t es = f64 ? 8 : 4;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int t = 0; t < nt; t++) {
    int64_t lo = t * chunk, hi = lo + chunk < n ? lo + chunk : n;
    if (lo >= hi) part[t] = rd_identity(pr);
    else if (f64) part[t] = run_f64((const double *)(x + lo * es), hi - lo, pr, aux, p);
    else part[t] = run_f32((const float *)(x + lo * es), hi - lo, pr, aux, p);
  }
  double acc = part[0];
  for (int t = 1; t < nt; t++) acc = rd_combine(pr, acc, part[t]);
  return acc;
}

/* the value of op over one run */
static double rd_value(const char *x, bool f64, int64_t n, ad_redop op, double param, bool par) {
  switch (op) {
  case AD_RED_SUM: return rd_run(x, f64, n, P_SUM, 0, 0, par);
  case AD_RED_PROD: return rd_run(x, f64, n, P_PROD, 0, 0, par);
  case AD_RED_MAX: return rd_run(x, f64, n, P_MAX, 0, 0, par);
  case AD_RED_MIN: return rd_run(x, f64, n, P_MIN, 0, 0, par);
  case AD_RED_NORM1: return rd_run(x, f64, n, P_SUMABS, 0, 0, par);
  case AD_RED_NORM2: return sqrt(rd_run(x, f64, n, P_SUMSQ, 0, 0, par));
  case AD_RED_NORMINF: return rd_run(x, f64, n, P_MAXABS, 0, 0, par);
  case AD_RED_NORMNEGINF: return rd_run(x, f64, n, P_MINABS, 0, 0, par);
  case AD_RED_NORM0: return rd_run(x, f64, n, P_NNZ, 0, 0, par);
  case AD_RED_NORMP: return pow(rd_run(x, f64, n, P_SUMPOW, 0, param, par), 1.0 / param);
  case AD_RED_LOGSUMEXP: {
    double m = rd_run(x, f64, n, P_MAX, 0, 0, par);
    if (!isfinite(m)) return m; /* all -inf, some +inf, or NaN */
    return m + log(rd_run(x, f64, n, P_SUMEXP, m, 0, par));
  }
  case AD_RED_VAR: {
    double mean = rd_run(x, f64, n, P_SUM, 0, 0, par) / (double)n;
    double denom = (double)n - param;
    return rd_run(x, f64, n, P_SUMSQDEV, mean, 0, par) / (denom > 0 ? denom : 0.0);
  }
  default: return NAN;
  }
}

/* ------------------------------------------------------------------------ */
/* column blocks: x points at (o, 0, j0); jn columns of stride inner          */

#define RD_COLS_LOOP(T, UPDATE)                                                           \
  for (int64_t i = 0; i < r; i++) {                                                       \
    const T *row = x + i * inner;                                                         \
    for (int64_t j = 0; j < jn; j++) {                                                    \
      const double v = row[j];                                                            \
      UPDATE;                                                                             \
    }                                                                                     \
  }

#define RD_COLS_BODY(T)                                                                   \
  do {                                                                                    \
    const double id = rd_identity(pr);                                                    \
    for (int64_t j = 0; j < jn; j++) acc[j] = id;                                         \
    switch (pr) {                                                                         \
    case P_SUM: RD_COLS_LOOP(T, acc[j] += v); break;                                      \
    case P_PROD: RD_COLS_LOOP(T, acc[j] *= v); break;                                     \
    case P_MAX: RD_COLS_LOOP(T, acc[j] = (v != v || v > acc[j]) ? v : acc[j]); break;     \
    case P_MIN: RD_COLS_LOOP(T, acc[j] = (v != v || v < acc[j]) ? v : acc[j]); break;     \
    case P_SUMABS: RD_COLS_LOOP(T, acc[j] += fabs(v)); break;                             \
    case P_SUMSQ: RD_COLS_LOOP(T, acc[j] += v * v); break;                                \
    case P_MAXABS: RD_COLS_LOOP(T, acc[j] = (v != v || fabs(v) > acc[j]) ? fabs(v) : acc[j]); break; \
    case P_MINABS: RD_COLS_LOOP(T, acc[j] = (v != v || fabs(v) < acc[j]) ? fabs(v) : acc[j]); break; \
    case P_SUMPOW: RD_COLS_LOOP(T, acc[j] += pow(fabs(v), p)); break;                     \
    case P_NNZ: RD_COLS_LOOP(T, acc[j] += v != 0); break;                                 \
    case P_SUMEXP: RD_COLS_LOOP(T, acc[j] += exp(v - aux[j])); break;                     \
    case P_SUMSQDEV: RD_COLS_LOOP(T, acc[j] += (v - aux[j]) * (v - aux[j])); break;       \
    }                                                                                     \
  } while (0)

static void cols_f32(const float *x, int64_t r, int64_t inner, int64_t jn, rd_prim pr, const double *aux, double p,
                     double *acc) {
  RD_COLS_BODY(float);
}
static void cols_f64(const double *x, int64_t r, int64_t inner, int64_t jn, rd_prim pr, const double *aux,
                     double p, double *acc) {
  RD_COLS_BODY(double);
}

static void rd_cols(const char *x, bool f64, int64_t r, int64_t inner, int64_t jn, rd_prim pr, const double *aux,
                    double p, double *acc) {
  if (f64) cols_f64((const double *)x, r, inner, jn, pr, aux, p, acc);
  else cols_f32((const float *)x, r, inner, jn, pr, aux, p, acc);
}

/* out[j] = op over column j of the block */
static void rd_cols_value(const char *x, bool f64, int64_t r, int64_t inner, int64_t jn, ad_redop op,
                          double param, double *out, double *tmp) {
  switch (op) {
  case AD_RED_SUM: rd_cols(x, f64, r, inner, jn, P_SUM, NULL, 0, out); break;
  case AD_RED_PROD: rd_cols(x, f64, r, inner, jn, P_PROD, NULL, 0, out); break;
  case AD_RED_MAX: rd_cols(x, f64, r, inner, jn, P_MAX, NULL, 0, out); break;
  case AD_RED_MIN: rd_cols(x, f64, r, inner, jn, P_MIN, NULL, 0, out); break;
  case AD_RED_NORM1: rd_cols(x, f64, r, inner, jn, P_SUMABS, NULL, 0, out); break;
  case AD_RED_NORM2:
    rd_cols(x, f64, r, inner, jn, P_SUMSQ, NULL, 0, out);
    for (int64_t j = 0; j < jn; j++) out[j] = sqrt(out[j]);
    break;
  case AD_RED_NORMINF: rd_cols(x, f64, r, inner, jn, P_MAXABS, NULL, 0, out); break;
  case AD_RED_NORMNEGINF: rd_cols(x, f64, r, inner, jn, P_MINABS, NULL, 0, out); break;
  case AD_RED_NORM0: rd_cols(x, f64, r, inner, jn, P_NNZ, NULL, 0, out); break;
  case AD_RED_NORMP:
    rd_cols(x, f64, r, inner, jn, P_SUMPOW, NULL, param, out);
    for (int64_t j = 0; j < jn; j++) out[j] = pow(out[j], 1.0 / param);
    break;
  case AD_RED_LOGSUMEXP:
    rd_cols(x, f64, r, inner, jn, P_MAX, NULL, 0, tmp);
    rd_cols(x, f64, r, inner, jn, P_SUMEXP, tmp, 0, out);
    for (int64_t j = 0; j < jn; j++) out[j] = isfinite(tmp[j]) ? tmp[j] + log(out[j]) : tmp[j];
    break;
  case AD_RED_VAR: {
    double denom = (double)r - param;
    if (denom < 0) denom = 0;
    rd_cols(x, f64, r, inner, jn, P_SUM, NULL, 0, tmp);
    for (int64_t j = 0; j < jn; j++) tmp[j] /= (double)r;
    rd_cols(x, f64, r, inner, jn, P_SUMSQDEV, tmp, 0, out);
    for (int64_t j = 0; j < jn; j++) out[j] /= denom;
    break;
  }
  default:
    for (int64_t j = 0; j < jn; j++) out[j] = NAN;
    break;
  }
}

/* ------------------------------------------------------------------------ */

static void rd_store(char *y, bool f64, int64_t i, double v) {
  if (f64) ((double *)y)[i] = v;
  else ((float *)y)[i] = (float)v;
}

static void rd_bool(uint8_t *y, const uint8_t *x, int64_t outer, int64_t r, int64_t inner, bool all) {
  const int64_t total = outer * r * inner;
#pragma omp parallel for schedule(static) if (total >= RD_OMP_MIN)
  for (int64_t o = 0; o < outer; o++) {
    uint8_t *yo = y + o * inner;
    const uint8_t *xo = x + o * r * inner;
    for (int64_t j = 0; j < inner; j++) yo[j] = all ? 1 : 0;
    for (int64_t i = 0; i < r; i++) {
      const uint8_t *row = xo + i * inner;
      if (all)
        for (int64_t j = 0; j < inner; j++) yo[j] &= row[j] != 0;
      else
        for (int64_t j = 0; j < inner; j++) yo[j] |= row[j] != 0;
    }
  }
}

static ad_status cpu_reduce(ad_tensor *y, const ad_tensor *x, int64_t outer, int64_t r, int64_t inner,
                            ad_redop op, double param) {
  if (outer * r * inner > 0 && (!ad_is_contiguous(x) || !ad_is_contiguous(y)))
    return AD_FAIL(AD_EINVAL, "reduce: cpu kernel needs contiguous tensors");
  if (op == AD_RED_ALL || op == AD_RED_ANY) {
    if (x->dtype != AD_BOOL || y->dtype != AD_BOOL) return AD_FAIL(AD_EDTYPE, "all/any: cpu kernel needs bool tensors");
    rd_bool((uint8_t *)ad_data(y), (const uint8_t *)ad_data(x), outer, r, inner, op == AD_RED_ALL);
    return AD_OK;
  }
  if ((x->dtype != AD_F32 && x->dtype != AD_F64) || y->dtype != x->dtype)
    return AD_FAIL(AD_EDTYPE, "reduce: cpu kernel got %s -> %s (f32 or f64 expected)", ad_dtype_name(x->dtype),
                   ad_dtype_name(y->dtype));
  const bool f64 = x->dtype == AD_F64;
  const size_t es = f64 ? 8 : 4;
  const char *xd = (const char *)ad_data(x);
  char *yd = (char *)ad_data(y);
  const int64_t total = outer * r * inner;
  if (outer == 0 || inner == 0) return AD_OK;
  if (inner == 1) {
    const int nt = omp_get_max_threads();
    if (outer >= 2 * (int64_t)nt || total < RD_OMP_MIN) {
#pragma omp parallel for schedule(static) if (total >= RD_OMP_MIN)
      for (int64_t o = 0; o < outer; o++) rd_store(yd, f64, o, rd_value(xd + o * r * es, f64, r, op, param, false));
    } else {
      for (int64_t o = 0; o < outer; o++) rd_store(yd, f64, o, rd_value(xd + o * r * es, f64, r, op, param, true));
    }
    return AD_OK;
  }
  const int64_t nb = (inner + RD_BLOCK - 1) / RD_BLOCK;
#pragma omp parallel for schedule(static) if (total >= RD_OMP_MIN)
  for (int64_t w = 0; w < outer * nb; w++) {
    double out[RD_BLOCK], tmp[RD_BLOCK];
    const int64_t o = w / nb, j0 = (w % nb) * RD_BLOCK;
    const int64_t jn = inner - j0 < RD_BLOCK ? inner - j0 : RD_BLOCK;
    rd_cols_value(xd + (o * r * inner + j0) * es, f64, r, inner, jn, op, param, out, tmp);
    for (int64_t j = 0; j < jn; j++) rd_store(yd, f64, o * inner + j0 + j, out[j]);
  }
  return AD_OK;
}

/* ------------------------------------------------------------------------ */
/* max/min with indices                                                       */

#define RD_ARG_BODY(T)                                                                    \
  do {                                                                                    \
    const T *xd = (const T *)ad_data(x);                                                  \
    T *vd = values ? (T *)ad_data(values) : NULL;                                         \
    int64_t *id = (int64_t *)ad_data(indices);                                            \
    const int64_t nb = (inner + RD_BLOCK - 1) / RD_BLOCK;                                 \
    _Pragma("omp parallel for schedule(static) if (total >= RD_OMP_MIN)")                 \
    for (int64_t w = 0; w < outer * nb; w++) {                                            \
      T best[RD_BLOCK];                                                                   \
      int64_t bi[RD_BLOCK];                                                               \
      const int64_t o = w / nb, j0 = (w % nb) * RD_BLOCK;                                 \
      const int64_t jn = inner - j0 < RD_BLOCK ? inner - j0 : RD_BLOCK;                   \
      const T *xo = xd + o * r * inner + j0;                                              \
      for (int64_t j = 0; j < jn; j++) { best[j] = xo[j]; bi[j] = 0; }                    \
      for (int64_t i = 1; i < r; i++) {                                                   \
        const T *row = xo + i * inner;                                                    \
        if (is_max) {                                                                     \
          for (int64_t j = 0; j < jn; j++) {                                              \
            const T v = row[j];                                                           \
            if (best[j] == best[j] && (v != v || v > best[j])) { best[j] = v; bi[j] = i; } \
          }                                                                               \
        } else {                                                                          \
          for (int64_t j = 0; j < jn; j++) {                                              \
            const T v = row[j];                                                           \
            if (best[j] == best[j] && (v != v || v < best[j])) { best[j] = v; bi[j] = i; } \
          }                                                                               \
        }                                                                                 \
      }                                                                                   \
      for (int64_t j = 0; j < jn; j++) {                                                  \
        if (vd) vd[o * inner + j0 + j] = best[j];                                         \
        id[o * inner + j0 + j] = bi[j];                                                   \
      }                                                                                   \
    }                                                                                     \
  } while (0)

static ad_status cpu_arg_reduce(ad_tensor *values, ad_tensor *indices, const ad_tensor *x, int64_t outer,
                                int64_t r, int64_t inner, bool is_max) {
  if (r < 1) return AD_FAIL(AD_EINVAL, "%s: cannot reduce an empty dimension", is_max ? "max" : "min");
  if ((x->dtype != AD_F32 && x->dtype != AD_F64) || (values && values->dtype != x->dtype) ||
      indices->dtype != AD_I64)
    return AD_FAIL(AD_EDTYPE, "%s: cpu kernel got %s (f32 or f64 expected)", is_max ? "max" : "min",
                   ad_dtype_name(x->dtype));
  const int64_t total = outer * r * inner;
  if (outer == 0 || inner == 0) return AD_OK;
  if (x->dtype == AD_F32) RD_ARG_BODY(float);
  else RD_ARG_BODY(double);
  return AD_OK;
}

static ad_status cpu_arg_reduce_bwd(ad_tensor *dx, const ad_tensor *dy, const ad_tensor *indices, int64_t outer,
                                    int64_t r, int64_t inner) {
  if (dx->dtype != dy->dtype || indices->dtype != AD_I64 ||
      (ad_numel(dx) > 0 && (!ad_is_contiguous(dy) || !ad_is_contiguous(dx))))
    return AD_FAIL(AD_EINVAL, "max/min backward: cpu kernel got mismatched tensors");
  const size_t es = ad_dtype_size(dx->dtype);
  char *dxd = (char *)ad_data(dx);
  const char *dyd = (const char *)ad_data(dy);
  const int64_t *id = (const int64_t *)ad_data(indices);
  const int64_t total = outer * r * inner;
#pragma omp parallel for schedule(static) if (total >= RD_OMP_MIN)
  for (int64_t o = 0; o < outer; o++) {
    memset(dxd + o * r * inner * es, 0, (size_t)(r * inner) * es);
    for (int64_t j = 0; j < inner; j++) {
      int64_t i = id[o * inner + j];
      if (i < 0 || i >= r) continue; /* cannot happen for indices made by arg_reduce */
      memcpy(dxd + ((o * r + i) * inner + j) * es, dyd + (o * inner + j) * es, es);
    }
  }
  return AD_OK;
}

/* ------------------------------------------------------------------------ */
/* cumsum                                                                     */

#define RD_CUMSUM_BODY(T)                                                                 \
  do {                                                                                    \
    const T *xd = (const T *)ad_data(x);                                                  \
    T *yd = (T *)ad_data(y);                                                              \
    const int64_t nb = (inner + RD_BLOCK - 1) / RD_BLOCK;                                 \
    _Pragma("omp parallel for schedule(static) if (total >= RD_OMP_MIN)")                 \
    for (int64_t w = 0; w < outer * nb; w++) {                                            \
      double acc[RD_BLOCK];                                                               \
      const int64_t o = w / nb, j0 = (w % nb) * RD_BLOCK;                                 \
      const int64_t jn = inner - j0 < RD_BLOCK ? inner - j0 : RD_BLOCK;                   \
      for (int64_t j = 0; j < jn; j++) acc[j] = 0;                                        \
      for (int64_t k = 0; k < r; k++) {                                                   \
        const int64_t i = reverse ? r - 1 - k : k;                                        \
        const int64_t base = (o * r + i) * inner + j0;                                    \
        for (int64_t j = 0; j < jn; j++) {                                                \
          acc[j] += xd[base + j];                                                         \
          yd[base + j] = (T)acc[j];                                                       \
        }                                                                                 \
      }                                                                                   \
    }                                                                                     \
  } while (0)

static ad_status cpu_cumsum(ad_tensor *y, const ad_tensor *x, int64_t outer, int64_t r, int64_t inner,
                            bool reverse) {
  if ((x->dtype != AD_F32 && x->dtype != AD_F64) || y->dtype != x->dtype ||
      (ad_numel(x) > 0 && (!ad_is_contiguous(x) || !ad_is_contiguous(y))))
    return AD_FAIL(AD_EDTYPE, "cumsum: cpu kernel got %s (contiguous f32 or f64 expected)", ad_dtype_name(x->dtype));
  const int64_t total = outer * r * inner;
  if (total == 0) return AD_OK;
  if (x->dtype == AD_F32) RD_CUMSUM_BODY(float);
  else RD_CUMSUM_BODY(double);
  return AD_OK;
}

const struct ad_reduce_kernels ad_cpu_reduce_kernels = {
    .reduce = cpu_reduce,
    .arg_reduce = cpu_arg_reduce,
    .arg_reduce_bwd = cpu_arg_reduce_bwd,
    .cumsum = cpu_cumsum,
};
