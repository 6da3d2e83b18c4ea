/* metrics.h: front ends of the evaluation-metric family (core/ops/metrics.c):
 * the heavy parts of FID, improved precision/recall and density/coverage.
 * None of them is differentiable: results never require grad.
 *
 * Distances are Euclidean between rows. The k-NN radii and the manifold
 * counts are exact decisions in f64 arithmetic: the distance blocks come from
 * f32 matrix products (||a||^2 + ||b||^2 - 2ab over centred features), each
 * carrying a rigorous error bound, and every pair whose bound straddles the
 * radius it is compared with is recomputed in f64 from the input rows. So the
 * answers are those of an f64 computation, at the speed of sgemm, in memory
 * bounded by block_rows rows of the distance matrix. On CUDA (k <= 32 for the
 * radii; no eigh) the blocks are f64 DGEMMs with the same kind of bound and
 * recheck, so the decisions are the CPU's (core/cuda/cuda_metrics.c). */
#ifndef AD_METRICS_H
#define AD_METRICS_H

#include "tensor.h"

/* radii (N) f64: distance from each row of x (N, D) to its k-th nearest other
 * row (k >= 1, N > k). ids (N) i64 or NULL: rows sharing an id are copies of
 * one point and never neighbours of each other. block_rows 0: automatic. */
ad_status ad_knn_radii(ad_tensor **radii, const ad_tensor *x, int64_t k, const ad_tensor *ids,
                       int64_t block_rows);

/* real (N, D), fake (M, D); real_radii (N) and fake_radii (M) (or NULL):
 *   fake_in_real (M) i64: how many real balls B(real_i, real_radii_i) hold fake_j
 *   real_in_real (N) i64: how many fakes lie in B(real_i, real_radii_i)
 *   real_in_fake (N) i64: how many fake balls B(fake_j, fake_radii_j) hold real_i
 *     (not computed, and may be NULL, when fake_radii is NULL)
 * precision = mean(fake_in_real > 0), density = sum(fake_in_real) / (k M),
 * coverage = mean(real_in_real > 0), recall = mean(real_in_fake > 0). */
ad_status ad_manifold_counts(ad_tensor **fake_in_real, ad_tensor **real_in_real, ad_tensor **real_in_fake,
                             const ad_tensor *real, const ad_tensor *fake, const ad_tensor *real_radii,
                             const ad_tensor *fake_radii, int64_t block_rows);

/* out (N, M) f64: Euclidean distances between the rows of a (N, D) and b (M, D) */
ad_status ad_cdist(ad_tensor **out, const ad_tensor *a, const ad_tensor *b);

/* mu (D) f64 and sigma (D, D) f64: mean and covariance of the rows of x (N, D)
 * (np.cov(x, rowvar=False, ddof=ddof)); N > ddof */
ad_status ad_mean_cov(ad_tensor **mu, ad_tensor **sigma, const ad_tensor *x, int ddof);

/* Symmetric eigendecomposition of a (n, n) (only its lower triangle is read):
 * w (n) ascending eigenvalues, f64; v (n, n) f64 with the eigenvectors in its
 * columns, or v == NULL for values only (LAPACK dsyevd). */
ad_status ad_eigh(ad_tensor **w, ad_tensor **v, const ad_tensor *a);

#endif
