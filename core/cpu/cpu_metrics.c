/* cpu_metrics.c: the CPU kernels of the evaluation-metric family
 * (backend_metrics.h): k-NN radii and manifold counts for precision/recall and
 * density/coverage, cdist, mean/covariance, and eigh through LAPACK's dsyevd
 * (the LAPACK inside Debian's OpenBLAS, Fortran ABI).
 *
 * Distances at scale. 50 000 x 50 000 pairs of 2048-d features is 10^13
 * multiply-adds: it has to be a matrix product, and sgemm is twice as fast as
 * dgemm. But ||a||^2 + ||b||^2 - 2ab in f32 cancels, and the metrics are
 * decisions (is d <= r?) that must come out as an f64 computation would. So:
 *  - the rows are centred (distances do not change; the cancellation shrinks)
 *    and rounded to f32; norms are taken in f64 from the rounded rows;
 *  - each f32 dot product carries the classic bound |err| <= g_D |a'||b'|
 *    (g_D = D u / (1 - D u), u = 2^-24), and rounding the centred rows moves a
 *    distance by at most u (|a'| + |b'|); together every distance is known to
 *    lie in [lo, hi];
 *  - a decision whose [lo, hi] straddles the radius, and every candidate for
 *    a k-th nearest neighbour, is recomputed in f64 from the input rows.
 * The bounds are worst-case, yet few pairs land in the band (about k D eps
 * per row), so the f64 work is a rounding error next to the sgemm.
 *
 * Memory stays bounded: distances are produced a tile or a block of rows at
 * a time (64 MiB of f32 products by default, block_rows to choose). The radii
 * of a set use the symmetry of its distance matrix (tiles J >= I only, ssyrk
 * on the diagonal: half the multiply-adds) and keep each row's k smallest
 * values by insertion; no row is ever sorted. For 50 000 x 50 000 x 2048
 * (real and fake) that is about 2 x 10^13 flops and under 1 GiB besides the
 * features. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../backend.h"
#include "../backend_metrics.h"

/* LAPACK (OpenBLAS): the hidden string lengths of the Fortran ABI come last */
extern void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda, double *w,
                    double *work, const int *lwork, int *iwork, const int *liwork, int *info, size_t ljobz,
                    size_t luplo);

#define U32 (1.0 / 16777216.0)        /* f32 unit roundoff */
#define U64 (1.0 / 9007199254740992.0) /* f64 unit roundoff */
#define BLOCK_BYTES ((int64_t)64 << 20)
#define TOPK_MAX 64   /* k up to this: symmetric tiles with the k smallest kept per row */

/* ------------------------------------------------------------------------ */
/* feature sets                                                             */

typedef struct {
  int64_t n, d;
  const void *x;      /* input rows, f32 or f64 */
  ad_dtype dt;
  float *xc;          /* fl32(x - centre), (n, d) */
  double *n2, *nrm;   /* ||xc_i||^2 in f64 and its square root */
} fset;

static void fset_free(fset *s) {
  free(s->xc);
  free(s->n2);
  s->xc = NULL;
  s->n2 = NULL;
}

static inline double xval(const fset *s, int64_t i, int64_t t) {
  return s->dt == AD_F64 ? ((const double *)s->x)[i * s->d + t] : (double)((const float *)s->x)[i * s->d + t];
}

/* The first row holding a NaN or Inf, or -1 (only run once a check failed) */
static int64_t find_nonfinite(const void *x, ad_dtype dt, int64_t n, int64_t d) {
  for (int64_t i = 0; i < n; i++)
    for (int64_t t = 0; t < d; t++) {
      double v = dt == AD_F64 ? ((const double *)x)[i * d + t] : (double)((const float *)x)[i * d + t];
      if (!isfinite(v)) return i;
    }
  return -1;
}

/* column sums of x (n, d) added to sum (d), f64; row by row (cache-friendly),
 * each thread over its own rows, then combined */
static void add_column_sums(double *sum, const void *x, ad_dtype dt, int64_t n, int64_t d) {
  int nt = omp_get_max_threads();
  if (n * d <= (1 << 16) || nt == 1) nt = 1;
  double *part = calloc((size_t)nt * (size_t)(d > 0 ? d : 1), sizeof(double));
  if (!part) nt = 0;  /* out of memory: serial, straight into sum */
  if (nt == 0) {
    for (int64_t i = 0; i < n; i++)
      for (int64_t t = 0; t < d; t++)
        sum[t] += dt == AD_F64 ? ((const double *)x)[i * d + t] : (double)((const float *)x)[i * d + t];
    return;
  }
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    double *p = part + (size_t)omp_get_thread_num() * (size_t)d;
#pragma omp for
    for (int64_t i = 0; i < n; i++) {
      if (dt == AD_F64) {
        const double *row = (const double *)x + i * d;
        for (int64_t t = 0; t < d; t++) p[t] += row[t];
      } else {
        const float *row = (const float *)x + i * d;
        for (int64_t t = 0; t < d; t++) p[t] += (double)row[t];
      }
    }
  }
  for (int q = 0; q < nt; q++)
    for (int64_t t = 0; t < d; t++) sum[t] += part[(size_t)q * (size_t)d + t];
  free(part);
}

/* Any NaN or Inf makes its column's sum non-finite, so finite column sums
 * clear the whole matrix without a separate pass; otherwise find the row. */
static ad_status finite_or_fail(const double *colsum, const void *x, ad_dtype dt, int64_t n, int64_t d,
                                const char *op, const char *what) {
  int ok = 1;
  for (int64_t t = 0; t < d; t++) ok &= isfinite(colsum[t]) ? 1 : 0;
  if (ok) return AD_OK;
  int64_t bad = find_nonfinite(x, dt, n, d);
  if (bad >= 0)
    return AD_FAIL(AD_EINVAL, "%s: %sfeatures contain NaN or Inf (row %lld)", op, what, (long long)bad + 1);
  return AD_OK;  /* finite values whose sum overflowed: fset_init reports them */
}

static ad_status fset_init(fset *s, const ad_tensor *x, const double *centre, const char *op, const char *what) {
  memset(s, 0, sizeof *s);
  s->n = x->shape[0];
  s->d = x->shape[1];
  s->x = ad_data(x);
  s->dt = x->dtype;
  int64_t n = s->n, d = s->d;
  s->xc = malloc((size_t)(n * d > 0 ? n * d : 1) * sizeof(float));
  s->n2 = malloc((size_t)(2 * n + 1) * sizeof(double));
  if (!s->xc || !s->n2) {
    fset_free(s);
    return AD_FAIL(AD_ENOMEM, "%s: out of memory for %lld x %lld features", op, (long long)n, (long long)d);
  }
  s->nrm = s->n2 + n;
  int overflow = 0;
#pragma omp parallel for if (n * d > (1 << 16)) reduction(| : overflow)
  for (int64_t i = 0; i < n; i++) {
    float *row = s->xc + i * d;
    double acc = 0;
    if (s->dt == AD_F64) {
      const double *src = (const double *)s->x + i * d;
      for (int64_t t = 0; t < d; t++) {
        float v = (float)(src[t] - centre[t]);
        row[t] = v;
        acc += (double)v * (double)v;
      }
    } else {
      const float *src = (const float *)s->x + i * d;
      for (int64_t t = 0; t < d; t++) {
        float v = (float)((double)src[t] - centre[t]);
        row[t] = v;
        acc += (double)v * (double)v;
      }
    }
    /* sgemm dot products of rows with norms beyond ~1e18 could overflow f32 */
    if (!isfinite(acc) || acc > 1e36) overflow = 1;
    s->n2[i] = acc;
    s->nrm[i] = sqrt(acc);
  }
  if (overflow) {
    fset_free(s);
    return AD_FAIL(AD_EINVAL, "%s: %s features are too large for the f32 distance pass (a centred row norm exceeds 1e18); rescale them",
                   op, what);
  }
  return AD_OK;
}

/* Error bounds of one pair, see the header comment. The f64 terms cover the
 * norm sums and the few f64 operations on d2; the absolute terms cover f32
 * underflow. */
typedef struct { double g32, g64, abs2, rho_rel, rho_abs; } bounds;

static bounds bounds_for(int64_t d) {
  bounds b;
  double du = (double)d * U32;
  b.g32 = du / (1.0 - du);
  b.g64 = (double)(d + 8) * U64 * 1.5;
  b.abs2 = (double)d * 1e-44 * 4;
  b.rho_rel = U32 * (1.0 + 1e-6);
  b.rho_abs = sqrt((double)d) * 2e-45 * 4;
  return b;
}

/* Bounds for every pair of row i (norm na, squared n2a) with any row of the
 * other set (largest norm nb_max): the true distance d of a pair whose
 * approximate squared distance is d2 satisfies
 *   sqrt(max(0, d2 - e)) - rho <= d <= sqrt(d2 + e) + rho.
 * One (e, rho) per row keeps the inner loops free of square roots; the bound
 * is looser only for pairs with rows much shorter than the longest. */
static inline void row_bound(const bounds *b, double n2a, double na, double nb_max, double *e, double *rho) {
  *e = 2.0 * b->g32 * na * nb_max + b->g64 * (n2a + nb_max * nb_max + 2.0 * na * nb_max) + b->abs2;
  *rho = b->rho_rel * (na + nb_max) + b->rho_abs;
}

/* Squared-distance thresholds for "d <= r" under a row bound: d2 <= *sure_in
 * means inside for sure, d2 > *sure_out outside for sure; in between, the f64
 * distance decides. The factors absorb the rounding of these few operations. */
static inline void thresholds(double r, double e, double rho, double *sure_in, double *sure_out) {
  double t = r - rho;
  *sure_in = t > 0 ? t * t * (1 - 8 * U64) - e * (1 + 8 * U64) : -INFINITY;
  double u = r + rho;
  *sure_out = u * u * (1 + 8 * U64) + e * (1 + 8 * U64);
}

static double max_of(const double *x, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
  return m;
}

/* f64 distance of row i of A and row j of B, from the input rows */
static double exact_dist(const fset *A, int64_t i, const fset *B, int64_t j) {
  int64_t d = A->d;
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t t = 0;
  if (A->dt == AD_F32 && B->dt == AD_F32) {
    const float *a = (const float *)A->x + i * d, *b = (const float *)B->x + j * d;
    for (; t + 4 <= d; t += 4) {
      double q0 = (double)a[t] - b[t], q1 = (double)a[t + 1] - b[t + 1];
      double q2 = (double)a[t + 2] - b[t + 2], q3 = (double)a[t + 3] - b[t + 3];
      s0 += q0 * q0; s1 += q1 * q1; s2 += q2 * q2; s3 += q3 * q3;
    }
    for (; t < d; t++) { double q = (double)a[t] - b[t]; s0 += q * q; }
  } else {
    for (; t < d; t++) { double q = xval(A, i, t) - xval(B, j, t); s0 += q * q; }
  }
  return sqrt((s0 + s1) + (s2 + s3));
}

/* ------------------------------------------------------------------------ */
/* selection                                                                */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* The k-th smallest (0-based) of a[0..n), reordering a. Quickselect with a
 * median-of-three pivot; falls back to sorting the range after too many
 * rounds, so adversarial inputs stay O(n log n). */
static double select_kth(double *a, int64_t n, int64_t k) {
  int64_t lo = 0, hi = n - 1;
  int rounds = 0;
  while (hi > lo) {
    if (++rounds > 64) {
      qsort(a + lo, (size_t)(hi - lo + 1), sizeof(double), cmp_double);
      return a[k];
    }
    int64_t mid = lo + (hi - lo) / 2;
    if (a[mid] < a[lo]) { double t = a[mid]; a[mid] = a[lo]; a[lo] = t; }
    if (a[hi] < a[lo]) { double t = a[hi]; a[hi] = a[lo]; a[lo] = t; }
    if (a[hi] < a[mid]) { double t = a[hi]; a[hi] = a[mid]; a[mid] = t; }
    double p = a[mid];
    int64_t i = lo, j = hi;
    while (i <= j) {
      while (a[i] < p) i++;
      while (a[j] > p) j--;
      if (i <= j) { double t = a[i]; a[i] = a[j]; a[j] = t; i++; j--; }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else return a[k];
  }
  return a[k];
}

static int64_t auto_block(int64_t rows, int64_t cols, int64_t requested) {
  int64_t b = requested > 0 ? requested : BLOCK_BYTES / (4 * (cols > 0 ? cols : 1));
  if (b < 16) b = 16;
  if (b > rows) b = rows;
  return b < 1 ? 1 : b;
}

/* ------------------------------------------------------------------------ */
/* k-NN radii                                                               */

/* The candidate threshold of a row: if the k-th smallest approximate squared
 * distance seen is K2, the k-th distance is at most H = sqrt(K2 + e) + rho
 * (those k rows are within it), so only rows whose lower bound
 * sqrt(d2 - e) - rho is <= H can be among the k nearest: d2 <= T. */
static inline double cand_threshold(double K2, double e, double rho) {
  if (!(K2 < INFINITY)) return INFINITY;
  double H = sqrt(K2 + e > 0 ? K2 + e : 0) * (1 + 4 * U64) + rho;
  double T = (H + rho) * (1 + 4 * U64);
  return T * T * (1 + 4 * U64) + e * (1 + 4 * U64);
}


/* Row by row: each block of rows against all rows, each row's k-th smallest
 * bound by partial selection. Used for k > TOPK_MAX. */
static ad_status knn_radii_rows(double *out, const fset *Sp, const int64_t *ids, int64_t k, int64_t block_rows) {
  const char *op = "knn_radii";
  const fset S = *Sp;
  int64_t n = S.n, d = S.d;
  int64_t B = auto_block(n, n, block_rows);
  int nt = omp_get_max_threads();
  float *G = malloc((size_t)(B * n) * sizeof(float));
  double *scratch = malloc((size_t)nt * (size_t)(2 * n) * sizeof(double));
  if (!G || !scratch) {
    free(G);
    free(scratch);
    return AD_FAIL(AD_ENOMEM, "%s: out of memory for a %lld x %lld distance block", op, (long long)B, (long long)n);
  }
  bounds bd = bounds_for(d);
  double nmax = max_of(S.nrm, n);
  int64_t short_row = -1;  /* a row with k or fewer other points (ids) */

  for (int64_t i0 = 0; i0 < n; i0 += B) {
    int64_t b = n - i0 < B ? n - i0 : B;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)b, (int)n, (int)d, 1.0f, S.xc + i0 * d, (int)d,
                S.xc, (int)d, 0.0f, G, (int)n);
#pragma omp parallel for schedule(dynamic, 4) if (b * n > (1 << 15)) reduction(max : short_row)
    for (int64_t r = 0; r < b; r++) {
      int64_t i = i0 + r;
      double *buf = scratch + (size_t)omp_get_thread_num() * (size_t)(2 * n), *cand = buf + n;
      const float *g = G + r * n;
      double n2i = S.n2[i];
      int64_t idi = ids ? ids[i] : 0;
      /* K2: the k-th smallest approximate d2 among the other rows */
      double K2;
      int64_t m = 0;
      for (int64_t j = 0; j < n; j++) {
        if (j == i || (ids && ids[j] == idi)) continue;
        buf[m++] = n2i + S.n2[j] - 2.0 * (double)g[j];
      }
      K2 = m >= k ? select_kth(buf, m, k - 1) : INFINITY;
      if (m < k) {
        out[i] = NAN;
        if (i > short_row) short_row = i;
        continue;
      }
      double e, rho;
      row_bound(&bd, n2i, S.nrm[i], nmax, &e, &rho);
      double T = cand_threshold(K2, e, rho);
      int64_t c = 0;
      for (int64_t j = 0; j < n; j++) {
        if (j == i || (ids && ids[j] == idi)) continue;
        if (n2i + S.n2[j] - 2.0 * (double)g[j] <= T) cand[c++] = exact_dist(&S, i, &S, j);
      }
      out[i] = select_kth(cand, c, k - 1);
    }
  }
  free(G);
  free(scratch);
  if (short_row >= 0)
    return AD_FAIL(AD_EINVAL, "%s: point %lld has %lld or fewer distinct neighbours (k = %lld)", op,
                   (long long)short_row + 1, (long long)k - 1, (long long)k);
  return AD_OK;
}


/* Symmetric tiles for k <= TOPK_MAX: the distance matrix of a set with itself
 * is symmetric, so only tiles (I, J) with J >= I are multiplied, each serving
 * the rows of I (its rows) and the rows of J (its columns, through a
 * transposed copy), and diagonal tiles come from ssyrk: half the
 * multiply-adds of row blocks. Each row keeps its k
 * smallest approximate d2 so far and the pairs under its current candidate
 * threshold; the threshold only falls, so the final candidates are among
 * those kept, and only they are recomputed in f64 at the end. */
typedef struct { int64_t j; double v; } knn_cand;

typedef struct {
  const fset *S;
  const int64_t *ids;
  int64_t k;
  double *top;          /* (n, k) ascending, +inf until filled */
  int64_t *seen;        /* valid other rows seen */
  double *e, *rho;      /* per-row bounds */
  knn_cand **cand;
  int64_t *len, *cap;
} knn_state;

/* row i meets rows jb .. jb+w-1 through the products g[0..w) */
static int knn_visit(knn_state *st, int64_t i, const float *g, int64_t jb, int64_t w) {
  const fset *S = st->S;
  const int64_t *ids = st->ids;
  int64_t k = st->k, idi = ids ? ids[i] : 0, seen = 0;
  double n2i = S->n2[i], *top = st->top + i * k;
  for (int64_t c = 0; c < w; c++) {
    int64_t j = jb + c;
    if (j == i || (ids && ids[j] == idi)) continue;
    seen++;
    double v = n2i + S->n2[j] - 2.0 * (double)g[c];
    if (v < top[k - 1]) {
      int64_t p = k - 1;
      while (p > 0 && top[p - 1] > v) { top[p] = top[p - 1]; p--; }
      top[p] = v;
    }
  }
  st->seen[i] += seen;
  double T = cand_threshold(top[k - 1], st->e[i], st->rho[i]);
  for (int64_t c = 0; c < w; c++) {
    int64_t j = jb + c;
    if (j == i || (ids && ids[j] == idi)) continue;
    double v = n2i + S->n2[j] - 2.0 * (double)g[c];
    if (!(v <= T)) continue;
    if (st->len[i] == st->cap[i]) {
      /* drop what the threshold has since excluded, grow if still full */
      knn_cand *a = st->cand[i];
      int64_t m = 0;
      for (int64_t q = 0; q < st->len[i]; q++)
        if (a[q].v <= T) a[m++] = a[q];
      st->len[i] = m;
      if (st->cap[i] == 0 || m * 2 > st->cap[i]) {
        int64_t nc = st->cap[i] ? 2 * st->cap[i] : 16;
        knn_cand *b = realloc(a, (size_t)nc * sizeof *b);
        if (!b) return -1;
        st->cand[i] = b;
        st->cap[i] = nc;
      }
    }
    st->cand[i][st->len[i]++] = (knn_cand){j, v};
  }
  return 0;
}

static ad_status knn_radii_tiles(double *out, const fset *S, const int64_t *ids, int64_t k, int64_t block_rows) {
  const char *op = "knn_radii";
  int64_t n = S->n, d = S->d;
  /* two tiles (G and its transpose) of B x B floats within BLOCK_BYTES */
  int64_t B = block_rows > 0 ? block_rows : (int64_t)sqrt((double)BLOCK_BYTES / 8.0);
  if (B < 16 && block_rows <= 0) B = 16;
  if (B > n) B = n;
  knn_state st = {S, ids, k, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
  st.top = malloc((size_t)(n * k) * sizeof(double));
  st.seen = calloc((size_t)n, sizeof(int64_t));
  st.e = malloc((size_t)(2 * n) * sizeof(double));
  st.cand = calloc((size_t)n, sizeof(knn_cand *));
  st.len = calloc((size_t)(2 * n), sizeof(int64_t));
  float *G = malloc((size_t)(2 * B * B) * sizeof(float));
  ad_status status = AD_OK;
  if (!st.top || !st.seen || !st.e || !st.cand || !st.len || !G) {
    status = AD_FAIL(AD_ENOMEM, "%s: out of memory for %lld points", op, (long long)n);
    goto done;
  }
  st.rho = st.e + n;
  st.cap = st.len + n;
  float *GT = G + B * B;
  bounds bd = bounds_for(d);
  double nmax = max_of(S->nrm, n);
  for (int64_t i = 0; i < n * k; i++) st.top[i] = INFINITY;
  for (int64_t i = 0; i < n; i++) row_bound(&bd, S->n2[i], S->nrm[i], nmax, &st.e[i], &st.rho[i]);

  int oom = 0;
  for (int64_t i0 = 0; i0 < n && !oom; i0 += B) {
    int64_t bi = n - i0 < B ? n - i0 : B;
    for (int64_t j0 = i0; j0 < n && !oom; j0 += B) {
      int64_t bj = n - j0 < B ? n - j0 : B;
      if (j0 == i0) {
        /* a diagonal tile is symmetric: ssyrk makes its upper half, a copy the rest */
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasNoTrans, (int)bi, (int)d, 1.0f, S->xc + i0 * d, (int)d, 0.0f, G,
                    (int)bi);
#pragma omp parallel for if (bi * bi > (1 << 15))
        for (int64_t r = 1; r < bi; r++)
          for (int64_t c = 0; c < r; c++) G[r * bi + c] = G[c * bi + r];
      } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)bi, (int)bj, (int)d, 1.0f, S->xc + i0 * d, (int)d,
                    S->xc + j0 * d, (int)d, 0.0f, G, (int)bj);
      }
#pragma omp parallel for schedule(dynamic, 8) if (bi * bj > (1 << 15)) reduction(| : oom)
      for (int64_t r = 0; r < bi; r++) oom |= knn_visit(&st, i0 + r, G + r * bj, j0, bj) != 0;
      if (j0 == i0) continue;
      /* the columns' rows: a cache-blocked transpose, then the same visit */
#pragma omp parallel for if (bi * bj > (1 << 15))
      for (int64_t cb = 0; cb < bj; cb += 32)
        for (int64_t rb = 0; rb < bi; rb += 32)
          for (int64_t c = cb; c < cb + 32 && c < bj; c++)
            for (int64_t r = rb; r < rb + 32 && r < bi; r++) GT[c * bi + r] = G[r * bj + c];
#pragma omp parallel for schedule(dynamic, 8) if (bi * bj > (1 << 15)) reduction(| : oom)
      for (int64_t c = 0; c < bj; c++) oom |= knn_visit(&st, j0 + c, GT + c * bi, i0, bi) != 0;
    }
  }
  if (oom) {
    status = AD_FAIL(AD_ENOMEM, "%s: out of memory for the neighbour candidates", op);
    goto done;
  }

  int64_t short_row = -1, maxlen = 1;
  for (int64_t i = 0; i < n; i++) {
    if (st.seen[i] < k && short_row < 0) short_row = i;
    if (st.len[i] > maxlen) maxlen = st.len[i];
  }
  if (short_row >= 0) {
    status = AD_FAIL(AD_EINVAL, "%s: point %lld has %lld or fewer distinct neighbours (k = %lld)", op,
                     (long long)short_row + 1, (long long)k - 1, (long long)k);
    goto done;
  }
  int nt = omp_get_max_threads();
  double *buf = malloc((size_t)nt * (size_t)maxlen * sizeof(double));
  if (!buf) {
    status = AD_FAIL(AD_ENOMEM, "%s: out of memory", op);
    goto done;
  }
#pragma omp parallel for schedule(dynamic, 16) if (n > 256)
  for (int64_t i = 0; i < n; i++) {
    double *dist = buf + (size_t)omp_get_thread_num() * (size_t)maxlen;
    double T = cand_threshold(st.top[i * k + k - 1], st.e[i], st.rho[i]);
    int64_t c = 0;
    for (int64_t q = 0; q < st.len[i]; q++)
      if (st.cand[i][q].v <= T) dist[c++] = exact_dist(S, i, S, st.cand[i][q].j);
    out[i] = select_kth(dist, c, k - 1);
  }
  free(buf);
done:
  if (st.cand)
    for (int64_t i = 0; i < n; i++) free(st.cand[i]);
  free(st.cand);
  free(st.top);
  free(st.seen);
  free(st.e);
  free(st.len);
  free(G);
  return status;
}

static ad_status cpu_knn_radii(ad_tensor *radii, const ad_tensor *x, const ad_tensor *ids_t, int64_t k,
                               int64_t block_rows) {
  const char *op = "knn_radii";
  int64_t n = x->shape[0], d = x->shape[1];
  if ((double)d * U32 >= 0.5) return AD_FAIL(AD_EINVAL, "%s: feature dimension %lld too large", op, (long long)d);
  double *out = (double *)ad_data(radii);
  double *centre = calloc((size_t)(d + 1), sizeof(double));
  if (!centre) return AD_FAIL(AD_ENOMEM, "%s: out of memory", op);
  add_column_sums(centre, ad_data(x), x->dtype, n, d);
  ad_status st = finite_or_fail(centre, ad_data(x), x->dtype, n, d, op, "");
  if (st != AD_OK || d == 0) {  /* d == 0: every distance is 0 */
    free(centre);
    if (st == AD_OK)
      for (int64_t i = 0; i < n; i++) out[i] = 0;
    return st;
  }
  for (int64_t t = 0; t < d; t++) centre[t] /= (double)n;
  fset S;
  st = fset_init(&S, x, centre, op, "the");
  free(centre);
  if (st != AD_OK) return st;
  const int64_t *ids = ids_t ? (const int64_t *)ad_data(ids_t) : NULL;
  st = k <= TOPK_MAX ? knn_radii_tiles(out, &S, ids, k, block_rows) : knn_radii_rows(out, &S, ids, k, block_rows);
  fset_free(&S);
  return st;
}

/* ------------------------------------------------------------------------ */
/* manifold counts                                                          */

static ad_status cpu_manifold_counts(ad_tensor *fake_in_real_t, ad_tensor *real_in_real_t, ad_tensor *real_in_fake_t,
                                     const ad_tensor *real, const ad_tensor *fake, const ad_tensor *rr_t,
                                     const ad_tensor *rf_t, int64_t block_rows) {
  const char *op = "manifold_counts";
  int64_t n = real->shape[0], m = fake->shape[0], d = real->shape[1];
  const double *rr = (const double *)ad_data(rr_t), *rf = rf_t ? (const double *)ad_data(rf_t) : NULL;
  for (int64_t i = 0; i < n; i++)
    if (!(rr[i] >= 0)) return AD_FAIL(AD_EINVAL, "%s: real radius %lld is %g", op, (long long)i + 1, rr[i]);
  if (rf)
    for (int64_t j = 0; j < m; j++)
      if (!(rf[j] >= 0)) return AD_FAIL(AD_EINVAL, "%s: fake radius %lld is %g", op, (long long)j + 1, rf[j]);
  if ((double)d * U32 >= 0.5) return AD_FAIL(AD_EINVAL, "%s: feature dimension %lld too large", op, (long long)d);

  int64_t *fir = (int64_t *)ad_data(fake_in_real_t), *rir = (int64_t *)ad_data(real_in_real_t);
  int64_t *rif = real_in_fake_t ? (int64_t *)ad_data(real_in_fake_t) : NULL;
  for (int64_t j = 0; j < m; j++) fir[j] = 0;
  if (n == 0 || m == 0 || d == 0) {
    /* d == 0: every distance is 0, inside every ball */
    for (int64_t i = 0; i < n; i++) {
      rir[i] = d == 0 ? m : 0;
      if (rif) rif[i] = d == 0 ? m : 0;
    }
    for (int64_t j = 0; j < m; j++) fir[j] = d == 0 ? n : 0;
    return AD_OK;
  }

  double *centre = calloc((size_t)(2 * d + 1), sizeof(double));
  if (!centre) return AD_FAIL(AD_ENOMEM, "%s: out of memory", op);
  double *fsum = centre + d;
  add_column_sums(centre, ad_data(real), real->dtype, n, d);
  add_column_sums(fsum, ad_data(fake), fake->dtype, m, d);
  ad_status st = finite_or_fail(centre, ad_data(real), real->dtype, n, d, op, "real ");
  if (st == AD_OK) st = finite_or_fail(fsum, ad_data(fake), fake->dtype, m, d, op, "fake ");
  if (st != AD_OK) {
    free(centre);
    return st;
  }
  for (int64_t t = 0; t < d; t++) centre[t] = (centre[t] + fsum[t]) / (double)(n + m);
  fset R, F;
  st = fset_init(&R, real, centre, op, "real");
  if (st == AD_OK) {
    st = fset_init(&F, fake, centre, op, "fake");
    if (st != AD_OK) fset_free(&R);
  }
  free(centre);
  if (st != AD_OK) return st;

  int64_t B = auto_block(n, m, block_rows);
  int nt = omp_get_max_threads();
  float *G = malloc((size_t)(B * m) * sizeof(float));
  int64_t *local = calloc((size_t)nt * (size_t)m, sizeof(int64_t));
  if (!G || !local) {
    free(G);
    free(local);
    fset_free(&R);
    fset_free(&F);
    return AD_FAIL(AD_ENOMEM, "%s: out of memory for a %lld x %lld distance block", op, (long long)B, (long long)m);
  }
  bounds bd = bounds_for(d);
  double fmax = max_of(F.nrm, m), rmax = max_of(R.nrm, n);
  /* the fake radii's thresholds, under one bound for all rows (the real
   * radii's use each row's own, tighter bound) */
  double *fin = NULL, *fout = NULL;
  if (rf) {
    fin = malloc((size_t)(2 * m) * sizeof(double));
    if (!fin) {
      free(G); free(local); fset_free(&R); fset_free(&F);
      return AD_FAIL(AD_ENOMEM, "%s: out of memory", op);
    }
    fout = fin + m;
    double e, rho;
    row_bound(&bd, rmax * rmax, rmax, fmax, &e, &rho);
    for (int64_t j = 0; j < m; j++) thresholds(rf[j], e, rho, &fin[j], &fout[j]);
  }

  for (int64_t i0 = 0; i0 < n; i0 += B) {
    int64_t b = n - i0 < B ? n - i0 : B;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)b, (int)m, (int)d, 1.0f, R.xc + i0 * d, (int)d,
                F.xc, (int)d, 0.0f, G, (int)m);
#pragma omp parallel for schedule(dynamic, 4) if (b * m > (1 << 15))
    for (int64_t r = 0; r < b; r++) {
      int64_t i = i0 + r;
      int64_t *mine = local + (size_t)omp_get_thread_num() * (size_t)m;
      const float *g = G + r * m;
      double n2i = R.n2[i], e, rho, in_r, out_r;
      row_bound(&bd, n2i, R.nrm[i], fmax, &e, &rho);
      thresholds(rr[i], e, rho, &in_r, &out_r);
      /* sure decisions, branch-free; count the pairs left undecided */
      int64_t in_real = 0, in_fake = 0, unsure = 0;
      for (int64_t j = 0; j < m; j++) {
        double v = n2i + F.n2[j] - 2.0 * (double)g[j];
        int64_t a = v <= in_r;
        in_real += a;
        mine[j] += a;
        unsure += (v > in_r) & (v <= out_r);
        if (fin) {
          in_fake += v <= fin[j];
          unsure += (v > fin[j]) & (v <= fout[j]);
        }
      }
      /* then the f64 distance for those (few) pairs */
      if (unsure)
        for (int64_t j = 0; j < m; j++) {
          double v = n2i + F.n2[j] - 2.0 * (double)g[j], exact = -1;
          if (v > in_r && v <= out_r) {
            exact = exact_dist(&R, i, &F, j);
            if (exact <= rr[i]) { in_real++; mine[j]++; }
          }
          if (fin && v > fin[j] && v <= fout[j]) {
            if (exact < 0) exact = exact_dist(&R, i, &F, j);
            in_fake += exact <= rf[j];
          }
        }
      rir[i] = in_real;
      if (rif) rif[i] = in_fake;
    }
  }
  free(fin);
  for (int t = 0; t < nt; t++)
    for (int64_t j = 0; j < m; j++) fir[j] += local[(size_t)t * (size_t)m + j];
  free(G);
  free(local);
  fset_free(&R);
  fset_free(&F);
  return AD_OK;
}

/* ------------------------------------------------------------------------ */
/* cdist, mean/covariance, eigh                                             */

/* f64 rows minus centre, into a new (n, d) buffer */
static double *centred_f64(const double *x, int64_t n, int64_t d, const double *centre) {
  double *c = malloc((size_t)(n * d > 0 ? n * d : 1) * sizeof(double));
  if (!c) return NULL;
#pragma omp parallel for if (n * d > (1 << 16))
  for (int64_t i = 0; i < n; i++)
    for (int64_t t = 0; t < d; t++) c[i * d + t] = x[i * d + t] - centre[t];
  return c;
}

/* a, b f64 (front end converts). Centring by the joint mean before
 * ||a||^2 + ||b||^2 - 2ab keeps the cancellation small. */
static ad_status cpu_cdist(ad_tensor *out, const ad_tensor *a, const ad_tensor *b) {
  const char *op = "cdist";
  int64_t n = a->shape[0], m = b->shape[0], d = a->shape[1];
  double *o = (double *)ad_data(out);
  if (n == 0 || m == 0) return AD_OK;
  double *centre = calloc((size_t)(d + 1), sizeof(double));
  if (!centre) return AD_FAIL(AD_ENOMEM, "%s: out of memory", op);
  add_column_sums(centre, ad_data(a), AD_F64, n, d);
  add_column_sums(centre, ad_data(b), AD_F64, m, d);
  for (int64_t t = 0; t < d; t++) centre[t] /= (double)(n + m);
  double *ac = centred_f64(ad_data(a), n, d, centre), *bc = centred_f64(ad_data(b), m, d, centre);
  double *na = malloc((size_t)(n + m) * sizeof(double));
  free(centre);
  if (!ac || !bc || !na) {
    free(ac); free(bc); free(na);
    return AD_FAIL(AD_ENOMEM, "%s: out of memory", op);
  }
  double *nb = na + n;
  for (int64_t i = 0; i < n; i++) { double s = 0; for (int64_t t = 0; t < d; t++) s += ac[i * d + t] * ac[i * d + t]; na[i] = s; }
  for (int64_t j = 0; j < m; j++) { double s = 0; for (int64_t t = 0; t < d; t++) s += bc[j * d + t] * bc[j * d + t]; nb[j] = s; }
  if (d > 0)
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)m, (int)d, -2.0, ac, (int)d, bc, (int)d, 0.0, o,
                (int)m);
  else
    memset(o, 0, (size_t)(n * m) * sizeof(double));
#pragma omp parallel for if (n * m > (1 << 16))
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < m; j++) {
      double v = o[i * m + j] + na[i] + nb[j];
      o[i * m + j] = v > 0 ? sqrt(v) : 0;
    }
  free(ac); free(bc); free(na);
  return AD_OK;
}

/* np.cov(x, rowvar=False, ddof): exact f64 mean, then the centred rows in
 * chunks through dsyrk, so an (N, D) f32 input never exists as f64 at once. */
static ad_status cpu_mean_cov(ad_tensor *mu_t, ad_tensor *sigma_t, const ad_tensor *x, int ddof) {
  const char *op = "mean_cov";
  int64_t n = x->shape[0], d = x->shape[1];
  double *mu = (double *)ad_data(mu_t), *s = (double *)ad_data(sigma_t);
  for (int64_t t = 0; t < d; t++) mu[t] = 0;
  add_column_sums(mu, ad_data(x), x->dtype, n, d);
  AD_TRY(finite_or_fail(mu, ad_data(x), x->dtype, n, d, op, ""));
  for (int64_t t = 0; t < d; t++) mu[t] /= (double)n;
  memset(s, 0, (size_t)(d * d) * sizeof(double));
  if (d == 0) return AD_OK;
  int64_t chunk = (int64_t)(16 << 20) / (8 * d);
  if (chunk < 64) chunk = 64;
  if (chunk > n) chunk = n;
  double *c = malloc((size_t)(chunk * d) * sizeof(double));
  if (!c) return AD_FAIL(AD_ENOMEM, "%s: out of memory", op);
  for (int64_t i0 = 0; i0 < n; i0 += chunk) {
    int64_t b = n - i0 < chunk ? n - i0 : chunk;
#pragma omp parallel for if (b * d > (1 << 16))
    for (int64_t r = 0; r < b; r++)
      for (int64_t t = 0; t < d; t++) {
        double v = x->dtype == AD_F64 ? ((const double *)ad_data(x))[(i0 + r) * d + t]
                                      : (double)((const float *)ad_data(x))[(i0 + r) * d + t];
        c[r * d + t] = v - mu[t];
      }
    /* row-major upper triangle of C += A^T A */
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)d, (int)b, 1.0, c, (int)d, 1.0, s, (int)d);
  }
  free(c);
  double scale = 1.0 / (double)(n - ddof);
#pragma omp parallel for if (d * d > (1 << 16))
  for (int64_t i = 0; i < d; i++)
    for (int64_t j = i; j < d; j++) {
      double v = s[i * d + j] * scale;
      s[i * d + j] = v;
      s[j * d + i] = v;
    }
  return AD_OK;
}

static ad_status cpu_eigh(ad_tensor *w_t, ad_tensor *v_t, const ad_tensor *a_t) {
  const char *op = "eigh";
  int n = (int)a_t->shape[0];
  if (n == 0) return AD_OK;
  const double *a = (const double *)ad_data(a_t);
  for (int64_t i = 0; i < (int64_t)n * n; i++)
    if (!isfinite(a[i])) return AD_FAIL(AD_EINVAL, "%s: the matrix contains NaN or Inf", op);
  /* row-major lower triangle == column-major upper triangle */
  double *buf = malloc((size_t)n * (size_t)n * sizeof(double));
  if (!buf) return AD_FAIL(AD_ENOMEM, "%s: out of memory for a %d x %d matrix", op, n, n);
  memcpy(buf, a, (size_t)n * (size_t)n * sizeof(double));
  const char jobz = v_t ? 'V' : 'N', uplo = 'U';
  int lda = n, lwork = -1, liwork = -1, info = 0, iwq = 0;
  double wq = 0;
  double *w = (double *)ad_data(w_t);
  dsyevd_(&jobz, &uplo, &n, buf, &lda, w, &wq, &lwork, &iwq, &liwork, &info, 1, 1);
  if (info != 0) {
    free(buf);
    return AD_FAIL(AD_EINVAL, "%s: LAPACK dsyevd workspace query failed (info %d)", op, info);
  }
  lwork = (int)wq + 1;
  liwork = iwq + 1;
  double *work = malloc((size_t)lwork * sizeof(double));
  int *iwork = malloc((size_t)liwork * sizeof(int));
  if (!work || !iwork) {
    free(buf); free(work); free(iwork);
    return AD_FAIL(AD_ENOMEM, "%s: out of memory for the LAPACK workspace", op);
  }
  dsyevd_(&jobz, &uplo, &n, buf, &lda, w, work, &lwork, iwork, &liwork, &info, 1, 1);
  free(work);
  free(iwork);
  if (info != 0) {
    free(buf);
    return AD_FAIL(AD_EINVAL, "%s: LAPACK dsyevd failed to converge (info %d)", op, info);
  }
  if (v_t) {
    /* column-major eigenvectors: buf[i + j n] = V(i, j) */
    double *v = (double *)ad_data(v_t);
#pragma omp parallel for if ((int64_t)n * n > (1 << 16))
    for (int i = 0; i < n; i++)
      for (int j = 0; j < n; j++) v[(int64_t)i * n + j] = buf[i + (int64_t)j * n];
  }
  free(buf);
  return AD_OK;
}

const struct ad_metrics_kernels ad_cpu_metrics_kernels = {
  .knn_radii = cpu_knn_radii,
  .manifold_counts = cpu_manifold_counts,
  .cdist = cpu_cdist,
  .mean_cov = cpu_mean_cov,
  .eigh = cpu_eigh,
};
