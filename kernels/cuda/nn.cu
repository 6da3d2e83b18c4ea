/* nn.cu: the two small kernels of the nn family that have no file of their
 * own, beside core/cpu/cpu_nn.c: embedding (gather rows / scatter-add rows)
 * and dropout (Philox mask). */
#include "common.cuh"

/* ======================================================================= embedding */

ADK_INLINE int64_t index_at(const void *p, int64_t i, bool i64) {
  return i64 ? ((const int64_t *)p)[i] : (int64_t)((const int32_t *)p)[i];
}

/* rows of row_bytes; indices already range-checked by the glue */
__global__ void embedding_fwd_kernel(char *out, const char *w, size_t row_bytes, const void *idx, bool i64,
                                     int64_t n) {
  const int64_t words = (int64_t)(row_bytes / 4);  /* rows and pointers 4-byte aligned on this path */
  ADK_GRID_LOOP(e, n * words) {
    int64_t i = e / words, k = e % words;
    ((uint32_t *)(out + i * row_bytes))[k] = ((const uint32_t *)(w + index_at(idx, i, i64) * row_bytes))[k];
  }
}
__global__ void embedding_fwd_bytes_kernel(char *out, const char *w, size_t row_bytes, const void *idx, bool i64,
                                           int64_t n) {
  const int64_t rb = (int64_t)row_bytes;
  ADK_GRID_LOOP(e, n * rb) {
    int64_t i = e / rb, k = e % rb;
    out[i * rb + k] = w[index_at(idx, i, i64) * rb + k];
  }
}

extern "C" cudaError_t ad_launch_embedding_fwd(const adk_ctx *c, void *out, const void *weight, size_t row_bytes,
                                               const void *indices, bool i64, int64_t n) {
  if (n == 0 || row_bytes == 0) return cudaSuccess;
  const int threads = 256;
  if (row_bytes % 4 == 0 && ((uintptr_t)out | (uintptr_t)weight) % 4 == 0)
    embedding_fwd_kernel<<<adk_blocks(c, n * (int64_t)(row_bytes / 4), threads), threads, 0, c->stream>>>(
        (char *)out, (const char *)weight, row_bytes, indices, i64, n);
  else
    embedding_fwd_bytes_kernel<<<adk_blocks(c, n * (int64_t)row_bytes, threads), threads, 0, c->stream>>>(
        (char *)out, (const char *)weight, row_bytes, indices, i64, n);
  return adk_launched();
}

/* One thread per column d walks the n lookups in order: repeated indices add
 * in the CPU's order, so the result is deterministic and the same bits. */
template <typename T>
__global__ void embedding_bwd_kernel(T *dw, const T *g, const void *idx, bool i64, int64_t n, int64_t D) {
  ADK_GRID_LOOP(d, D) {
    for (int64_t i = 0; i < n; i++) {
      T *p = dw + index_at(idx, i, i64) * D + d;
      *p = *p + g[i * D + d];
    }
  }
}

extern "C" cudaError_t ad_launch_embedding_bwd(const adk_ctx *c, void *dweight, const void *dout, int dtype,
                                               const void *indices, bool i64, int64_t n, int64_t D) {
  if (n == 0 || D == 0) return cudaSuccess;
  const int threads = 128;
  unsigned blocks = adk_blocks(c, D, threads);
  ADK_DISPATCH_F(dtype, T, (embedding_bwd_kernel<T><<<blocks, threads, 0, c->stream>>>((T *)dweight,
                                                                                         (const T *)dout, indices,
                                                                                         i64, n, D)));
  return adk_launched();
}

/* ======================================================================= dropout */

/* One thread per Philox block: the uniforms of elements 2j and 2j+1, the
 * layout of ad_philox_uniform, so the mask is the CPU's bit for bit. */
template <typename T>
__global__ void dropout_fwd_kernel(T *y, T *mask, const T *x, int64_t n, double keep, double scale,
                                   uint64_t seed, uint64_t offset) {
  ADK_GRID_LOOP(j, (n + 1) / 2) {
    ad_philox_ctr r = ad_philox4x32_10(seed, offset + (uint64_t)j, 0);
    double u[2] = {ad_u32_to_unit(r.v[0], r.v[1]), ad_u32_to_unit(r.v[2], r.v[3])};
#pragma unroll
    for (int h = 0; h < 2; h++) {
      int64_t i = 2 * j + h;
      if (i >= n) break;
      const T m = (T)(u[h] < keep ? scale : 0.0);
      mask[i] = m;
      y[i] = x[i] * m;
    }
  }
}
__global__ void dropout_fwd_any_kernel(void *y, void *mask, const void *x, int dtype, int64_t n, double keep,
                                       double scale, uint64_t seed, uint64_t offset) {
  ADK_GRID_LOOP(j, (n + 1) / 2) {
    ad_philox_ctr r = ad_philox4x32_10(seed, offset + (uint64_t)j, 0);
    double u[2] = {ad_u32_to_unit(r.v[0], r.v[1]), ad_u32_to_unit(r.v[2], r.v[3])};
    for (int h = 0; h < 2; h++) {
      int64_t i = 2 * j + h;
      if (i >= n) break;
      adk_store_any(dtype, mask, i, u[h] < keep ? scale : 0.0);
      adk_store_any(dtype, y, i, adk_load_any(dtype, x, i) * adk_load_any(dtype, mask, i));
    }
  }
}

extern "C" cudaError_t ad_launch_dropout_fwd(const adk_ctx *c, void *y, void *mask, const void *x, int dtype,
                                             int64_t n, double p, uint64_t seed, uint64_t offset) {
  if (n == 0) return cudaSuccess;
  const double keep = 1.0 - p, scale = p >= 1.0 ? 0.0 : 1.0 / keep;
  const int threads = 256;
  unsigned blocks = adk_blocks(c, (n + 1) / 2, threads);
  if (dtype == ADK_F32)
    dropout_fwd_kernel<float><<<blocks, threads, 0, c->stream>>>((float *)y, (float *)mask, (const float *)x, n,
                                                                 keep, scale, seed, offset);
  else if (dtype == ADK_F64)
    dropout_fwd_kernel<double><<<blocks, threads, 0, c->stream>>>((double *)y, (double *)mask, (const double *)x,
                                                                  n, keep, scale, seed, offset);
  else
    dropout_fwd_any_kernel<<<blocks, threads, 0, c->stream>>>(y, mask, x, dtype, n, keep, scale, seed, offset);
  return adk_launched();
}
