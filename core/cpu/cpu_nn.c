/* cpu_nn.c: the CPU instance of the nn kernel table (backend_nn.h), and the
 * two small kernels that have no file of their own: embedding (gather rows /
 * scatter-add rows) and dropout (Philox mask). */
#include <string.h>
#include <omp.h>
#include "../backend.h"
#include "../backend_nn.h"
#include "../mathinl.h"
#include "cpu_iter.h"

/* ======================================================================= embedding */

static int64_t index_at(const void *p, int64_t i, bool i64) {
  return i64 ? ((const int64_t *)p)[i] : (int64_t)((const int32_t *)p)[i];
}

ad_status ad_cpu_embedding_fwd(ad_tensor *out, const ad_tensor *weight, const ad_tensor *indices) {
  const int64_t n = ad_numel(indices), V = weight->shape[0], D = weight->shape[1];
  const bool i64 = indices->dtype == AD_I64;
  const void *pi = ad_data(indices);
  /* validate first: a failure must leave no half-written output behind a success path */
  for (int64_t i = 0; i < n; i++) {
    int64_t r = index_at(pi, i, i64);
    if (r < 0 || r >= V)
      return AD_FAIL(AD_EINVAL, "embedding: index %lld out of range for %lld rows", (long long)r, (long long)V);
  }
  const size_t row = (size_t)D * ad_dtype_size(weight->dtype);
  const char *pw = ad_data(weight);
  char *po = ad_data(out);
  #pragma omp parallel for schedule(static) if (n * D > AD_OMP_MIN)
  for (int64_t i = 0; i < n; i++) memcpy(po + i * row, pw + index_at(pi, i, i64) * row, row);
  return AD_OK;
}

/* Repeated indices add into the same row, so threads split the D columns
 * rather than the n lookups: no two threads ever write one element, and the
 * sum order per element is fixed (deterministic). */
ad_status ad_cpu_embedding_bwd(ad_tensor *dweight, const ad_tensor *dout, const ad_tensor *indices) {
  const int64_t n = ad_numel(indices), V = dweight->shape[0], D = dweight->shape[1];
  const bool i64 = indices->dtype == AD_I64, f64 = dweight->dtype == AD_F64;
  const void *pi = ad_data(indices);
  for (int64_t i = 0; i < n; i++) {
    int64_t r = index_at(pi, i, i64);
    if (r < 0 || r >= V)
      return AD_FAIL(AD_EINVAL, "embedding: index %lld out of range for %lld rows", (long long)r, (long long)V);
  }
  const void *pg = ad_data(dout);
  void *pd = ad_data(dweight);
  bool par = D >= 64 && n * D > AD_OMP_MIN;
  #pragma omp parallel if (par)
  {
    int nt = omp_get_num_threads(), t = omp_get_thread_num();
    int64_t d0 = D * t / nt, d1 = D * (t + 1) / nt;
    for (int64_t i = 0; i < n; i++) {
      int64_t r = index_at(pi, i, i64);
      if (f64) {
        double *dst = (double *)pd + r * D;
        const double *src = (const double *)pg + i * D;
        for (int64_t d = d0; d < d1; d++) dst[d] += src[d];
      } else {
        float *dst = (float *)pd + r * D;
        const float *src = (const float *)pg + i * D;
        for (int64_t d = d0; d < d1; d++) dst[d] += src[d];
      }
    }
  }
  return AD_OK;
}

/* ======================================================================= dropout */

/* One Philox block gives the uniforms of elements 2j and 2j+1 (the layout of
 * ad_philox_uniform), so the loop runs over blocks and draws each once. */
ad_status ad_cpu_dropout_fwd(ad_tensor *y, ad_tensor *mask, const ad_tensor *x, double p, uint64_t seed,
                             uint64_t offset) {
  const int64_t n = ad_numel(x), nblk = (n + 1) / 2;
  const ad_dtype dt = x->dtype;
  const void *px = ad_data(x);
  void *py = ad_data(y), *pm = ad_data(mask);
  const double keep = 1.0 - p, scale = p >= 1.0 ? 0.0 : 1.0 / keep;
  #pragma omp parallel for schedule(static) if (n > AD_OMP_MIN / 4)
  for (int64_t j = 0; j < nblk; j++) {
    ad_philox_ctr r = ad_philox4x32_10(seed, offset + (uint64_t)j, 0);
    double u[2] = {ad_u32_to_unit(r.v[0], r.v[1]), ad_u32_to_unit(r.v[2], r.v[3])};
    for (int h = 0; h < 2; h++) {
      int64_t i = 2 * j + h;
      if (i >= n) break;
      double m = u[h] < keep ? scale : 0.0;
      if (dt == AD_F32) {
        ((float *)pm)[i] = (float)m;
        ((float *)py)[i] = ((const float *)px)[i] * (float)m;
      } else if (dt == AD_F64) {
        ((double *)pm)[i] = m;
        ((double *)py)[i] = ((const double *)px)[i] * m;
      } else {
        ad_store_elem(pm, dt, i, m);
        ad_store_elem(py, dt, i, ad_load_elem(px, dt, i) * ad_load_elem(pm, dt, i));
      }
    }
  }
  return AD_OK;
}

/* ======================================================================= the table */

const struct ad_nn_kernels ad_cpu_nn_kernels = {
  .group_norm_fwd = ad_cpu_group_norm_fwd,
  .group_norm_bwd = ad_cpu_group_norm_bwd,
  .batch_norm_fwd = ad_cpu_batch_norm_fwd,
  .batch_norm_bwd = ad_cpu_batch_norm_bwd,
  .layer_norm_fwd = ad_cpu_layer_norm_fwd,
  .layer_norm_bwd = ad_cpu_layer_norm_bwd,
  .softmax_fwd = ad_cpu_softmax_fwd,
  .softmax_bwd = ad_cpu_softmax_bwd,
  .attention_fwd = ad_cpu_attention_fwd,
  .attention_bwd = ad_cpu_attention_bwd,
  .embedding_fwd = ad_cpu_embedding_fwd,
  .embedding_bwd = ad_cpu_embedding_bwd,
  .dropout_fwd = ad_cpu_dropout_fwd,
  .pointwise_loss_fwd = ad_cpu_pointwise_loss_fwd,
  .pointwise_loss_bwd = ad_cpu_pointwise_loss_bwd,
  .cross_entropy_fwd = ad_cpu_cross_entropy_fwd,
  .cross_entropy_bwd = ad_cpu_cross_entropy_bwd,
  .nll_loss_fwd = ad_cpu_nll_loss_fwd,
  .nll_loss_bwd = ad_cpu_nll_loss_bwd,
};
