/* backend_metrics.h: the kernels a device provides for the evaluation-metric
 * family (core/ops/metrics.c): k-nearest-neighbour radii and manifold
 * membership counts for improved precision/recall and density/coverage, the
 * Euclidean distance matrix, the mean/covariance of a feature set, and the
 * symmetric eigendecomposition FID needs.
 *
 * Inputs arrive contiguous, checked and (for the feature kernels) as f32 or
 * f64; outputs are allocated by the front end. The kernels read the data, so
 * they are where non-finite features are found and reported (AD_EINVAL). */
#ifndef AD_BACKEND_METRICS_H
#define AD_BACKEND_METRICS_H

#include <stdint.h>
#include "tensor.h"

struct ad_metrics_kernels {
  /* radii (N) f64 <- distance from each row of x (N, D) to its k-th nearest
   * other row. A row never counts itself; with ids (N, i64, or NULL) no row
   * counts a row that has its own id either (copies of one point in a
   * bootstrap resample). block_rows bounds the rows of the distance block held
   * at once (0: automatic). */
  ad_status (*knn_radii)(ad_tensor *radii, const ad_tensor *x, const ad_tensor *ids, int64_t k,
                         int64_t block_rows);
  /* For real (N, D), fake (M, D), real_radii (N) and fake_radii (M), f64 radii:
   *   fake_in_real (M) i64: #{i : d(fake_j, real_i) <= real_radii_i}
   *   real_in_real (N) i64: #{j : d(real_i, fake_j) <= real_radii_i}
   *   real_in_fake (N) i64: #{j : d(real_i, fake_j) <= fake_radii_j}
   * fake_radii may be NULL (then real_in_fake is not written and may be NULL). */
  ad_status (*manifold_counts)(ad_tensor *fake_in_real, ad_tensor *real_in_real, ad_tensor *real_in_fake,
                               const ad_tensor *real, const ad_tensor *fake, const ad_tensor *real_radii,
                               const ad_tensor *fake_radii, int64_t block_rows);
  /* out (N, M) f64 <- Euclidean distances between the rows of a (N, D) and b (M, D) */
  ad_status (*cdist)(ad_tensor *out, const ad_tensor *a, const ad_tensor *b);
  /* mu (D) f64, sigma (D, D) f64 <- mean and covariance of the rows of x (N, D), divided by N - ddof */
  ad_status (*mean_cov)(ad_tensor *mu, ad_tensor *sigma, const ad_tensor *x, int ddof);
  /* w (n) ascending eigenvalues and v (n, n), eigenvectors in the columns (or
   * NULL: values only) of the symmetric f64 matrix a (n, n); only a's lower
   * triangle is read. */
  ad_status (*eigh)(ad_tensor *w, ad_tensor *v, const ad_tensor *a);
};

#endif
