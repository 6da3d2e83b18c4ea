/* cuda_metrics.c: the CUDA instance of the metric kernel table
 * (backend_metrics.h): k-NN radii, manifold counts, cdist and mean/covariance
 * on the GPU; eigh stays on the CPU (NULL here: FID's eigendecomposition is a
 * D x D problem that LAPACK does in f64 on the host).
 *
 * Unlike the CPU, which multiplies in f32 and bounds the error, the GPU
 * works in f64 throughout: Hopper's FP64 tensor cores make a DGEMM of
 * 50 000 x 50 000 x 2048 a fraction of a second. The features are centred
 * (by their mean; by the joint mean for two sets) into f64 copies, and the
 * distance matrix is produced block_rows rows at a time (1 GiB of f64 by
 * default), each block a cuBLAS DGEMM followed by the decision kernels of
 * kernels/cuda/metrics.cu, which recompute every pair the f64 error bound
 * leaves open exactly as the CPU does. The radii of a set do not use the
 * symmetry of its distance matrix (the CPU's tiles do): twice the
 * multiply-adds, but every row's k nearest come from one block row.
 *
 * Memory: the f64 copies (8 N D bytes per set: 800 MiB for 50 000 x 2048)
 * plus one block. Small host copies (column sums, norms, radii) carry the
 * checks that need the data: non-finite features, overflow, bad radii. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "cuda_internal.h"
#include "../backend_metrics.h"

#define BLOCK_DOUBLES ((int64_t)1 << 27) /* 1 GiB of f64 distances per block by default */
#define COV_CHUNK_BYTES ((int64_t)256 << 20)
#define NORM2_MAX 1e290                  /* centred squared norms beyond this could overflow v */

/* a device buffer from the caching allocator (at least 8 bytes, so empty sets need no special case) */
static ad_status dalloc(void **p, int64_t nbytes, int dev) {
  return ad_cuda_malloc(p, (size_t)(nbytes > 8 ? nbytes : 8), dev);
}
static void dfree(void *p, int64_t nbytes, int dev) {
  if (p) ad_cuda_free(p, (size_t)(nbytes > 8 ? nbytes : 8), dev);
}

static int64_t block_of(int64_t rows, int64_t cols, int64_t requested) {
  int64_t b = requested > 0 ? requested : BLOCK_DOUBLES / (cols > 0 ? cols : 1);
  if (b > rows) b = rows;
  return b < 1 ? 1 : b;
}

/* host copy of the column sums of x (d doubles), with non-finite features
 * reported by row as the CPU does */
static ad_status column_sums(double *host, double *scratch, const adk_ctx *kc, const ad_tensor *x, const char *op,
                             const char *what) {
  int dev = ad_cuda_dev_of(x);
  int64_t n = x->shape[0], d = x->shape[1];
  AD_TRY(ad_cuda_check(cudaMemsetAsync(scratch, 0, (size_t)(d > 0 ? d : 1) * sizeof(double), kc->stream), op));
  AD_TRY(ad_cuda_check(ad_launch_metrics_column_sums(kc, scratch, ad_data(x), x->dtype, n, d), op));
  AD_TRY(ad_cuda_to_host(host, scratch, (size_t)d * sizeof(double), dev));
  int ok = 1;
  for (int64_t t = 0; t < d; t++) ok &= isfinite(host[t]) ? 1 : 0;
  if (ok) return AD_OK;
  int64_t bad = -1;
  AD_TRY(ad_cuda_check(ad_launch_metrics_first_nonfinite(kc, ad_data(x), x->dtype, n, d, &bad), op));
  if (bad >= 0)
    return AD_FAIL(AD_EINVAL, "%s: %sfeatures contain NaN or Inf (row %lld)", op, what, (long long)bad + 1);
  return AD_OK;  /* finite values whose sum overflowed: the norm check reports them */
}

/* xc <- x - centre (f64), n2 its squared row norms; *nmax the largest norm */
static ad_status centre_set(double *xc, double *n2, double *nmax, const adk_ctx *kc, const ad_tensor *x,
                            const double *centre, const char *op, const char *what) {
  int64_t n = x->shape[0], d = x->shape[1];
  AD_TRY(ad_cuda_check(ad_launch_metrics_centre(kc, xc, n2, ad_data(x), x->dtype, n, d, centre), op));
  double *h = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
  if (!h) return AD_FAIL(AD_ENOMEM, "%s: out of host memory", op);
  ad_status st = ad_cuda_to_host(h, n2, (size_t)n * sizeof(double), ad_cuda_dev_of(x));
  double mx = 0;
  for (int64_t i = 0; st == AD_OK && i < n; i++) {
    if (!(h[i] <= NORM2_MAX))
      st = AD_FAIL(AD_EINVAL, "%s: %s features are too large for the f64 distance pass (a centred row norm "
                   "exceeds 1e145); rescale them", op, what);
    mx = h[i] > mx ? h[i] : mx;
  }
  free(h);
  *nmax = sqrt(mx);
  return st;
}

/* ------------------------------------------------------------------------ */
/* k-NN radii                                                               */

static ad_status cuda_knn_radii(ad_tensor *radii, const ad_tensor *x, const ad_tensor *ids_t, int64_t k,
                                int64_t block_rows) {
  const char *op = "knn_radii";
  int64_t n = x->shape[0], d = x->shape[1];
  int dev = ad_cuda_dev_of(x);
  if (k > ADK_KNN_MAXK)
    return AD_FAIL(AD_ENOTIMPL, "%s: the CUDA kernel takes k <= %d, got %lld (move the features to the CPU)", op,
                   ADK_KNN_MAXK, (long long)k);
  adk_ctx kc;
  ad_cuda_dev *D;
  AD_TRY(ad_cuda_kctx(&kc, &D, dev));
  double *out = (double *)ad_data(radii);
  int64_t B = block_of(n, n, block_rows);
  int64_t cbytes = d * (int64_t)sizeof(double), xbytes = n * d * (int64_t)sizeof(double);
  int64_t nbytes = n * (int64_t)sizeof(double), gbytes = B * n * (int64_t)sizeof(double);
  double *centre = NULL, *xc = NULL, *n2 = NULL, *G = NULL, nmax = 0;
  unsigned long long *short_row = NULL, sr = 0;
  const int64_t *ids = ids_t ? (const int64_t *)ad_data(ids_t) : NULL;
  double *hc = malloc((size_t)(d > 0 ? d : 1) * sizeof(double));
  ad_status st = hc ? AD_OK : AD_FAIL(AD_ENOMEM, "%s: out of host memory", op);
  if (st == AD_OK) st = dalloc((void **)&centre, cbytes, dev);
  if (st == AD_OK) st = column_sums(hc, centre, &kc, x, op, "");
  if (st == AD_OK && d == 0) {  /* every distance is 0 */
    st = ad_cuda_check(cudaMemsetAsync(out, 0, (size_t)nbytes, kc.stream), op);
    goto done;
  }
  if (st != AD_OK) goto done;
  for (int64_t t = 0; t < d; t++) hc[t] /= (double)n;
  AD_TRY_GOTO(st, ad_cuda_from_host(centre, hc, (size_t)cbytes, dev), done);
  AD_TRY_GOTO(st, dalloc((void **)&xc, xbytes, dev), done);
  AD_TRY_GOTO(st, dalloc((void **)&n2, nbytes, dev), done);
  AD_TRY_GOTO(st, centre_set(xc, n2, &nmax, &kc, x, centre, op, "the"), done);
  AD_TRY_GOTO(st, dalloc((void **)&G, gbytes, dev), done);
  AD_TRY_GOTO(st, dalloc((void **)&short_row, 8, dev), done);
  AD_TRY_GOTO(st, ad_cuda_check(cudaMemsetAsync(short_row, 0xff, sizeof *short_row, kc.stream), op), done);
  for (int64_t i0 = 0; i0 < n; i0 += B) {
    int64_t b = n - i0 < B ? n - i0 : B;
    AD_TRY_GOTO(st, ad_cuda_gemm_rm(D, AD_F64, false, true, b, n, d, 1.0, xc + i0 * d, d, 0, xc, d, 0, 0.0, G, n, 0, 1),
                done);
    AD_TRY_GOTO(st, ad_cuda_check(ad_launch_knn_radii_block(&kc, out, G, i0, b, ad_data(x), x->dtype, n, d, n2, nmax,
                                                            ids, k, short_row), op), done);
  }
  AD_TRY_GOTO(st, ad_cuda_to_host(&sr, short_row, sizeof sr, dev), done);
  if (sr != ~0ull)
    st = AD_FAIL(AD_EINVAL, "%s: point %lld has %lld or fewer distinct neighbours (k = %lld)", op,
                 (long long)sr + 1, (long long)k - 1, (long long)k);
done:
  free(hc);
  dfree(centre, cbytes, dev);
  dfree(xc, xbytes, dev);
  dfree(n2, nbytes, dev);
  dfree(G, gbytes, dev);
  dfree(short_row, 8, dev);
  return st;
}

/* ------------------------------------------------------------------------ */
/* manifold counts                                                          */

/* radii (n) f64 on the device: each >= 0 (NaN fails too), as the CPU checks */
static ad_status check_radii(const ad_tensor *r, const char *op, const char *what) {
  int64_t n = r->shape[0];
  double *h = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
  if (!h) return AD_FAIL(AD_ENOMEM, "%s: out of host memory", op);
  ad_status st = ad_cuda_to_host(h, ad_data(r), (size_t)n * sizeof(double), ad_cuda_dev_of(r));
  for (int64_t i = 0; st == AD_OK && i < n; i++)
    if (!(h[i] >= 0)) st = AD_FAIL(AD_EINVAL, "%s: %s radius %lld is %g", op, what, (long long)i + 1, h[i]);
  free(h);
  return st;
}

static ad_status cuda_manifold_counts(ad_tensor *fir_t, ad_tensor *rir_t, ad_tensor *rif_t, const ad_tensor *real,
                                      const ad_tensor *fake, const ad_tensor *rr_t, const ad_tensor *rf_t,
                                      int64_t block_rows) {
  const char *op = "manifold_counts";
  int64_t n = real->shape[0], m = fake->shape[0], d = real->shape[1];
  int dev = ad_cuda_dev_of(real);
  AD_TRY(check_radii(rr_t, op, "real"));
  if (rf_t) AD_TRY(check_radii(rf_t, op, "fake"));
  adk_ctx kc;
  ad_cuda_dev *D;
  AD_TRY(ad_cuda_kctx(&kc, &D, dev));
  int64_t *fir = (int64_t *)ad_data(fir_t), *rir = (int64_t *)ad_data(rir_t);
  int64_t *rif = rif_t ? (int64_t *)ad_data(rif_t) : NULL;
  if (n == 0 || m == 0 || d == 0) {
    /* d == 0: every distance is 0, inside every ball */
    AD_TRY(ad_cuda_check(ad_launch_fill_value(&kc, fir, AD_I64, m, d == 0 ? (double)n : 0.0), op));
    AD_TRY(ad_cuda_check(ad_launch_fill_value(&kc, rir, AD_I64, n, d == 0 ? (double)m : 0.0), op));
    if (rif) AD_TRY(ad_cuda_check(ad_launch_fill_value(&kc, rif, AD_I64, n, d == 0 ? (double)m : 0.0), op));
    return AD_OK;
  }
  int64_t B = block_of(n, m, block_rows);
  int64_t cbytes = d * (int64_t)sizeof(double);
  int64_t rbytes = n * d * (int64_t)sizeof(double), fbytes = m * d * (int64_t)sizeof(double);
  int64_t gbytes = B * m * (int64_t)sizeof(double);
  double *centre = NULL, *rc = NULL, *fc = NULL, *rn2 = NULL, *fn2 = NULL, *G = NULL, rmax = 0, fmax = 0;
  const double *rr = (const double *)ad_data(rr_t), *rf = rf_t ? (const double *)ad_data(rf_t) : NULL;
  double *hc = malloc((size_t)(2 * d) * sizeof(double));
  ad_status st = hc ? AD_OK : AD_FAIL(AD_ENOMEM, "%s: out of host memory", op);
  if (st != AD_OK) return st;
  double *hf = hc + d;
  AD_TRY_GOTO(st, dalloc((void **)&centre, cbytes, dev), done);
  AD_TRY_GOTO(st, column_sums(hc, centre, &kc, real, op, "real "), done);
  AD_TRY_GOTO(st, column_sums(hf, centre, &kc, fake, op, "fake "), done);
  for (int64_t t = 0; t < d; t++) hc[t] = (hc[t] + hf[t]) / (double)(n + m);
  AD_TRY_GOTO(st, ad_cuda_from_host(centre, hc, (size_t)cbytes, dev), done);
  AD_TRY_GOTO(st, dalloc((void **)&rc, rbytes, dev), done);
  AD_TRY_GOTO(st, dalloc((void **)&fc, fbytes, dev), done);
  AD_TRY_GOTO(st, dalloc((void **)&rn2, n * (int64_t)sizeof(double), dev), done);
  AD_TRY_GOTO(st, dalloc((void **)&fn2, m * (int64_t)sizeof(double), dev), done);
  AD_TRY_GOTO(st, centre_set(rc, rn2, &rmax, &kc, real, centre, op, "real"), done);
  AD_TRY_GOTO(st, centre_set(fc, fn2, &fmax, &kc, fake, centre, op, "fake"), done);
  AD_TRY_GOTO(st, dalloc((void **)&G, gbytes, dev), done);
  AD_TRY_GOTO(st, ad_cuda_check(cudaMemsetAsync(fir, 0, (size_t)m * sizeof(int64_t), kc.stream), op), done);
  for (int64_t i0 = 0; i0 < n; i0 += B) {
    int64_t b = n - i0 < B ? n - i0 : B;
    AD_TRY_GOTO(st, ad_cuda_gemm_rm(D, AD_F64, false, true, b, m, d, 1.0, rc + i0 * d, d, 0, fc, d, 0, 0.0, G, m, 0, 1),
                done);
    AD_TRY_GOTO(st, ad_cuda_check(ad_launch_manifold_counts_block(&kc, fir, rir, rif, G, i0, b, m, ad_data(real),
                                                                  ad_data(fake), real->dtype, d, rn2, fn2, fmax, rr, rf),
                                  op), done);
  }
done:
  free(hc);
  dfree(centre, cbytes, dev);
  dfree(rc, rbytes, dev);
  dfree(fc, fbytes, dev);
  dfree(rn2, n * (int64_t)sizeof(double), dev);
  dfree(fn2, m * (int64_t)sizeof(double), dev);
  dfree(G, gbytes, dev);
  return st;
}

/* ------------------------------------------------------------------------ */
/* cdist, mean/covariance                                                   */

/* a, b f64 (the front end converts). Centring by the joint mean keeps the
 * cancellation of ||a||^2 + ||b||^2 - 2ab small, as on the CPU. */
static ad_status cuda_cdist(ad_tensor *out, const ad_tensor *a, const ad_tensor *b) {
  const char *op = "cdist";
  int64_t n = a->shape[0], m = b->shape[0], d = a->shape[1];
  int dev = ad_cuda_dev_of(a);
  if (n == 0 || m == 0) return AD_OK;
  adk_ctx kc;
  ad_cuda_dev *D;
  AD_TRY(ad_cuda_kctx(&kc, &D, dev));
  double *o = (double *)ad_data(out);
  int64_t cbytes = d * (int64_t)sizeof(double), abytes = n * d * (int64_t)sizeof(double);
  int64_t bbytes = m * d * (int64_t)sizeof(double), nbytes = (n + m) * (int64_t)sizeof(double);
  double *centre = NULL, *ac = NULL, *bc = NULL, *na = NULL;
  double *hc = malloc((size_t)(d > 0 ? d : 1) * sizeof(double));
  ad_status st = hc ? AD_OK : AD_FAIL(AD_ENOMEM, "%s: out of host memory", op);
  if (st != AD_OK) return st;
  AD_TRY_GOTO(st, dalloc((void **)&centre, cbytes, dev), done);
  AD_TRY_GOTO(st, ad_cuda_check(cudaMemsetAsync(centre, 0, (size_t)cbytes, kc.stream), op), done);
  AD_TRY_GOTO(st, ad_cuda_check(ad_launch_metrics_column_sums(&kc, centre, ad_data(a), AD_F64, n, d), op), done);
  AD_TRY_GOTO(st, ad_cuda_check(ad_launch_metrics_column_sums(&kc, centre, ad_data(b), AD_F64, m, d), op), done);
  AD_TRY_GOTO(st, ad_cuda_to_host(hc, centre, (size_t)cbytes, dev), done);
  for (int64_t t = 0; t < d; t++) hc[t] /= (double)(n + m);
  AD_TRY_GOTO(st, ad_cuda_from_host(centre, hc, (size_t)cbytes, dev), done);
  AD_TRY_GOTO(st, dalloc((void **)&ac, abytes, dev), done);
  AD_TRY_GOTO(st, dalloc((void **)&bc, bbytes, dev), done);
  AD_TRY_GOTO(st, dalloc((void **)&na, nbytes, dev), done);
  AD_TRY_GOTO(st, ad_cuda_check(ad_launch_metrics_centre(&kc, ac, na, ad_data(a), AD_F64, n, d, centre), op), done);
  AD_TRY_GOTO(st, ad_cuda_check(ad_launch_metrics_centre(&kc, bc, na + n, ad_data(b), AD_F64, m, d, centre), op), done);
  if (d > 0)
    AD_TRY_GOTO(st, ad_cuda_gemm_rm(D, AD_F64, false, true, n, m, d, -2.0, ac, d, 0, bc, d, 0, 0.0, o, m, 0, 1), done);
  else
    AD_TRY_GOTO(st, ad_cuda_check(cudaMemsetAsync(o, 0, (size_t)(n * m) * sizeof(double), kc.stream), op), done);
  st = ad_cuda_check(ad_launch_cdist_finish(&kc, o, na, na + n, n, m), op);
done:
  free(hc);
  dfree(centre, cbytes, dev);
  dfree(ac, abytes, dev);
  dfree(bc, bbytes, dev);
  dfree(na, nbytes, dev);
  return st;
}

/* np.cov(x, rowvar=False, ddof): the f64 mean, then the centred rows in
 * chunks through DGEMM (C += Xc^T Xc), so an f32 input never exists as f64 at
 * once; the upper triangle, scaled, is mirrored as on the CPU. */
static ad_status cuda_mean_cov(ad_tensor *mu_t, ad_tensor *sigma_t, const ad_tensor *x, int ddof) {
  const char *op = "mean_cov";
  int64_t n = x->shape[0], d = x->shape[1];
  int dev = ad_cuda_dev_of(x);
  adk_ctx kc;
  ad_cuda_dev *D;
  AD_TRY(ad_cuda_kctx(&kc, &D, dev));
  double *mu = (double *)ad_data(mu_t), *s = (double *)ad_data(sigma_t);
  double *hc = malloc((size_t)(d > 0 ? d : 1) * sizeof(double));
  if (!hc) return AD_FAIL(AD_ENOMEM, "%s: out of host memory", op);
  ad_status st = column_sums(hc, mu, &kc, x, op, "");
  if (st == AD_OK) {
    for (int64_t t = 0; t < d; t++) hc[t] /= (double)n;
    st = ad_cuda_from_host(mu, hc, (size_t)d * sizeof(double), dev);
  }
  free(hc);
  AD_TRY(st);
  if (d == 0) return AD_OK;
  int64_t chunk = COV_CHUNK_BYTES / (8 * d);
  if (chunk < 64) chunk = 64;
  if (chunk > n) chunk = n;
  int64_t cbytes = chunk * d * (int64_t)sizeof(double);
  double *c = NULL;
  AD_TRY(dalloc((void **)&c, cbytes, dev));
  const size_t es = ad_dtype_size(x->dtype);
  for (int64_t i0 = 0; i0 < n && st == AD_OK; i0 += chunk) {
    int64_t b = n - i0 < chunk ? n - i0 : chunk;
    const void *rows = (const char *)ad_data(x) + (size_t)(i0 * d) * es;
    st = ad_cuda_check(ad_launch_metrics_centre(&kc, c, NULL, rows, x->dtype, b, d, mu), op);
    if (st == AD_OK)
      st = ad_cuda_gemm_rm(D, AD_F64, true, false, d, d, b, 1.0, c, d, 0, c, d, 0, i0 == 0 ? 0.0 : 1.0, s, d, 0, 1);
  }
  if (st == AD_OK) st = ad_cuda_check(ad_launch_cov_finish(&kc, s, d, 1.0 / (double)(n - ddof)), op);
  dfree(c, cbytes, dev);
  return st;
}

const struct ad_metrics_kernels ad_cuda_metrics_kernels = {
  .knn_radii = cuda_knn_radii,
  .manifold_counts = cuda_manifold_counts,
  .cdist = cuda_cdist,
  .mean_cov = cuda_mean_cov,
  .eigh = NULL,
};
