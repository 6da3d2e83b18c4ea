/* copy.cu: the CUDA backend's basic data movers, beside core/cpu/cpu_base.c:
 * strided copy with dtype conversion, fill, iota, index_select / index_add,
 * and the small helpers the glue needs (scale a strided matrix for k == 0
 * GEMMs, index range checks, plain fills).
 *
 * Conversions follow ad_cpu_copy case by case (the same pairs take the same
 * fast path, f64 -> f16/bf16 rounds through f32 with round-to-odd), so a
 * tensor converted on either device has the same bits. */
#include "common.cuh"

/* ---- one element: dst <- src, the rules of ad_cpu_copy ------------------- */
ADK_INLINE void copy_elem(int dt, char *d, int st, const char *s) {
  if (dt == st) {
    switch (adk_dtype_size(dt)) {
    case 8: *(uint64_t *)d = *(const uint64_t *)s; return;
    case 4: *(uint32_t *)d = *(const uint32_t *)s; return;
    case 2: *(uint16_t *)d = *(const uint16_t *)s; return;
    default:
      if (dt == ADK_BOOL) *(uint8_t *)d = *(const uint8_t *)s != 0;
      else *(uint8_t *)d = *(const uint8_t *)s;
      return;
    }
  }
  if (dt == ADK_F32 && st == ADK_F64) { *(float *)d = (float)*(const double *)s; return; }
  if (dt == ADK_F64 && st == ADK_F32) { *(double *)d = *(const float *)s; return; }
  if (dt == ADK_BF16 && st == ADK_F32) { *(uint16_t *)d = ad_f32_to_bf16(*(const float *)s); return; }
  if (dt == ADK_F16 && st == ADK_F32) { *(uint16_t *)d = ad_f32_to_f16(*(const float *)s); return; }
  if (dt == ADK_F32 && st == ADK_F16) { *(float *)d = ad_f16_to_f32(*(const uint16_t *)s); return; }
  if (dt == ADK_F32 && st == ADK_BF16) { *(float *)d = ad_bf16_to_f32(*(const uint16_t *)s); return; }
  if ((dt == ADK_F16 || dt == ADK_BF16) && st == ADK_F64) {
    /* f64 -> f32 with round-to-odd, then one rounding to 16 bits (exact, as the CPU) */
    double v = *(const double *)s;
    float f = (float)v;
    if ((double)f != v && f == f && !isinf(f)) {
      uint32_t u = ad_f32_bits(f);
      if (((double)f > v) == (f > 0)) u -= 1;
      u |= 1u;
      f = ad_bits_f32(u);
    }
    *(uint16_t *)d = dt == ADK_F16 ? ad_f32_to_f16(f) : ad_f32_to_bf16(f);
    return;
  }
  adk_store_any(dt, d, 0, adk_load_any(st, s, 0));
}

template <typename IDX>
__global__ void copy_kernel(adk_iter it, int64_t n) {
  const int dt = it.dtype[0], st = it.dtype[1];
  const int64_t ed = (int64_t)adk_dtype_size(dt), es = (int64_t)adk_dtype_size(st);
  ADK_GRID_LOOP(i, n) {
    int64_t off[2];
    adk_offsets<IDX, 2>(it, (IDX)i, off);
    copy_elem(dt, (char *)it.data[0] + off[0] * ed, st, (const char *)it.data[1] + off[1] * es);
  }
}

/* ---- typed paths: the pairs a training step converts all the time ----------
 * (f32 <-> f16/bf16 under autocast, f32 <-> f64, and same-dtype strided
 * copies), compiled per pair so no element pays copy_elem's dtype switch, and
 * vectorised when both sides are contiguous. The conversions are copy_elem's
 * (the same ad_f32_to_bf16 etc.), so the bits do not depend on the path. */
template <typename D, typename S> struct Cvt {
  static __device__ __forceinline__ void run(D *d, const S *s) { adk_st(d, adk_ld(s)); }
};
template <typename T> struct Cvt<T, T> {
  static __device__ __forceinline__ void run(T *d, const T *s) { *d = *s; }
};

template <typename T, int V> struct alignas(sizeof(T) * V) cvec { T v[V]; };

/* both contiguous: V elements per access (16 bytes on the wider side) */
template <typename D, typename S, int V>
__global__ void copy_flat_kernel(D *__restrict__ d, const S *__restrict__ s, int64_t n) {
  const int64_t stride = (int64_t)blockDim.x * gridDim.x, first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t nv = n / V;
  for (int64_t i = first; i < nv; i += stride) {
    const cvec<S, V> a = ((const cvec<S, V> *)s)[i];
    cvec<D, V> b;
#pragma unroll
    for (int k = 0; k < V; k++) Cvt<D, S>::run(&b.v[k], &a.v[k]);
    ((cvec<D, V> *)d)[i] = b;
  }
  for (int64_t i = nv * V + first; i < n; i += stride) Cvt<D, S>::run(d + i, s + i);
}

template <typename IDX, typename D, typename S>
__global__ void copy_typed_kernel(adk_iter it, int64_t n) {
  D *d = (D *)it.data[0];
  const S *s = (const S *)it.data[1];
  ADK_GRID_LOOP(i, n) {
    int64_t off[2];
    adk_offsets<IDX, 2>(it, (IDX)i, off);
    Cvt<D, S>::run(d + off[0], s + off[1]);
  }
}

template <typename D, typename S>
static cudaError_t copy_typed(const adk_ctx *c, const adk_iter &it, int64_t n) {
  const int threads = 256;
  if (adk_iter_is_flat(&it) && it.strides[0][0] == 1 && it.strides[1][0] == 1) {
    constexpr int V = 16 / (sizeof(D) > sizeof(S) ? sizeof(D) : sizeof(S));
    const uintptr_t pd = (uintptr_t)it.data[0], ps = (uintptr_t)it.data[1];
    if (V > 1 && pd % (sizeof(D) * V) == 0 && ps % (sizeof(S) * V) == 0)
      copy_flat_kernel<D, S, V><<<adk_blocks(c, (n + V - 1) / V, threads), threads, 0, c->stream>>>(
          (D *)it.data[0], (const S *)it.data[1], n);
    else
      copy_flat_kernel<D, S, 1><<<adk_blocks(c, n, threads), threads, 0, c->stream>>>((D *)it.data[0],
                                                                                      (const S *)it.data[1], n);
    return adk_launched();
  }
  const unsigned blocks = adk_blocks(c, n, threads);
  if (n < ((int64_t)1 << 31)) copy_typed_kernel<uint32_t, D, S><<<blocks, threads, 0, c->stream>>>(it, n);
  else copy_typed_kernel<uint64_t, D, S><<<blocks, threads, 0, c->stream>>>(it, n);
  return adk_launched();
}

extern "C" cudaError_t ad_launch_copy(const adk_ctx *c, const adk_iter *it_in) {
  adk_iter it = *it_in;
  adk_iter_coalesce(&it);
  int64_t n = adk_iter_numel(&it);
  if (n == 0) return cudaSuccess;
  const int dt = it.dtype[0], st = it.dtype[1];
  if (dt == st && dt != ADK_BOOL && adk_iter_is_flat(&it) && it.strides[0][0] == 1 && it.strides[1][0] == 1)
    return cudaMemcpyAsync(it.data[0], it.data[1], (size_t)n * adk_dtype_size(dt), cudaMemcpyDeviceToDevice,
                           c->stream);
  if (dt == st && dt != ADK_BOOL) {
    switch (adk_dtype_size(dt)) {
    case 8: return copy_typed<uint64_t, uint64_t>(c, it, n);
    case 4: return copy_typed<uint32_t, uint32_t>(c, it, n);
    case 2: return copy_typed<uint16_t, uint16_t>(c, it, n);
    default: return copy_typed<uint8_t, uint8_t>(c, it, n);
    }
  }
  if (dt == ADK_BF16 && st == ADK_F32) return copy_typed<adk_bf16, float>(c, it, n);
  if (dt == ADK_F32 && st == ADK_BF16) return copy_typed<float, adk_bf16>(c, it, n);
  if (dt == ADK_F16 && st == ADK_F32) return copy_typed<adk_f16, float>(c, it, n);
  if (dt == ADK_F32 && st == ADK_F16) return copy_typed<float, adk_f16>(c, it, n);
  if (dt == ADK_F32 && st == ADK_F64) return copy_typed<float, double>(c, it, n);
  if (dt == ADK_F64 && st == ADK_F32) return copy_typed<double, float>(c, it, n);
  const int threads = 256;
  unsigned blocks = adk_blocks(c, n, threads);
  if (n < ((int64_t)1 << 31)) copy_kernel<uint32_t><<<blocks, threads, 0, c->stream>>>(it, n);
  else copy_kernel<uint64_t><<<blocks, threads, 0, c->stream>>>(it, n);
  return adk_launched();
}

/* ---- fill ------------------------------------------------------------------ */
template <typename IDX>
__global__ void fill_kernel(adk_iter it, int64_t n, uint64_t bits) {
  const int64_t es = (int64_t)adk_dtype_size(it.dtype[0]);
  ADK_GRID_LOOP(i, n) {
    int64_t off[1];
    adk_offsets<IDX, 1>(it, (IDX)i, off);
    char *p = (char *)it.data[0] + off[0] * es;
    switch (es) {
    case 8: *(uint64_t *)p = bits; break;
    case 4: *(uint32_t *)p = (uint32_t)bits; break;
    case 2: *(uint16_t *)p = (uint16_t)bits; break;
    default: *(uint8_t *)p = (uint8_t)bits; break;
    }
  }
}

/* The value as the bit pattern of one element of dt: ad_store_elem's rules,
 * except f32, which the CPU fill writes as (float)value as well. */
static uint64_t fill_bits(int dt, double v) {
  uint64_t bits = 0;
  switch (dt) {
  case ADK_F32: { float f = (float)v; memcpy(&bits, &f, 4); break; }
  case ADK_F64: memcpy(&bits, &v, 8); break;
  case ADK_F16: bits = ad_f32_to_f16((float)v); break;
  case ADK_BF16: bits = ad_f32_to_bf16((float)v); break;
  case ADK_I64: {
    int64_t i = v != v ? 0 : v >= 9.2233720368547758e18 ? INT64_MAX : v <= -9.2233720368547758e18 ? INT64_MIN : (int64_t)v;
    memcpy(&bits, &i, 8);
    break;
  }
  case ADK_I32: {
    int32_t i = v != v ? 0 : v >= 2147483647.0 ? INT32_MAX : v <= -2147483648.0 ? INT32_MIN : (int32_t)v;
    uint32_t u;
    memcpy(&u, &i, 4);
    bits = u;
    break;
  }
  case ADK_U8: {
    double w = v != v ? 0 : v < 0 ? fmod(256.0 + fmod(trunc(v), 256.0), 256.0) : fmod(trunc(v), 256.0);
    bits = (uint8_t)w;
    break;
  }
  case ADK_BOOL: bits = v != 0; break;
  default: break;
  }
  return bits;
}

extern "C" cudaError_t ad_launch_fill(const adk_ctx *c, const adk_iter *it_in, double value) {
  adk_iter it = *it_in;
  adk_iter_coalesce(&it);
  int64_t n = adk_iter_numel(&it);
  if (n == 0) return cudaSuccess;
  uint64_t bits = fill_bits(it.dtype[0], value);
  if (bits == 0 && adk_iter_is_flat(&it) && it.strides[0][0] == 1)
    return cudaMemsetAsync(it.data[0], 0, (size_t)n * adk_dtype_size(it.dtype[0]), c->stream);
  const int threads = 256;
  unsigned blocks = adk_blocks(c, n, threads);
  if (n < ((int64_t)1 << 31)) fill_kernel<uint32_t><<<blocks, threads, 0, c->stream>>>(it, n, bits);
  else fill_kernel<uint64_t><<<blocks, threads, 0, c->stream>>>(it, n, bits);
  return adk_launched();
}

/* fill a contiguous buffer with one value (0, -inf, ...) */
extern "C" cudaError_t ad_launch_fill_value(const adk_ctx *c, void *p, int dtype, int64_t n, double v) {
  adk_iter it = {};
  it.ndim = 1;
  it.shape[0] = n;
  it.nops = 1;
  it.data[0] = p;
  it.dtype[0] = dtype;
  it.strides[0][0] = 1;
  return ad_launch_fill(c, &it, v);
}

/* ---- iota: start + i * step, rounded once (no fused multiply-add) -------------- */
__global__ void iota_kernel(void *dst, int dtype, int64_t n, double start, double step) {
  ADK_GRID_LOOP(i, n) adk_store_any(dtype, dst, i, __dadd_rn(start, __dmul_rn((double)i, step)));
}
__global__ void iota_i64_kernel(int64_t *dst, int64_t n, int64_t start, int64_t step) {
  ADK_GRID_LOOP(i, n) dst[i] = start + i * step;
}

extern "C" cudaError_t ad_launch_iota(const adk_ctx *c, void *dst, int dtype, int64_t n, double start, double step) {
  if (n == 0) return cudaSuccess;
  const int threads = 256;
  unsigned blocks = adk_blocks(c, n, threads);
  if (dtype == ADK_I64 && start == (double)(int64_t)start && step == (double)(int64_t)step)
    iota_i64_kernel<<<blocks, threads, 0, c->stream>>>((int64_t *)dst, n, (int64_t)start, (int64_t)step);
  else
    iota_kernel<<<blocks, threads, 0, c->stream>>>(dst, dtype, n, start, step);
  return adk_launched();
}

/* ---- index_select / index_add ------------------------------------------------ */
template <typename U>
__global__ void index_select_kernel(U *dst, const U *src, int64_t outer, int64_t src_dim, int64_t inner,
                                    const int64_t *idx, int64_t n_idx) {
  const int64_t total = outer * n_idx * inner;
  ADK_GRID_LOOP(e, total) {
    int64_t i = e % inner, t = e / inner, j = t % n_idx, a = t / n_idx;
    dst[e] = src[(a * src_dim + idx[j]) * inner + i];
  }
}

extern "C" cudaError_t ad_launch_index_select(const adk_ctx *c, void *dst, const void *src, size_t esize,
                                              int64_t outer, int64_t src_dim, int64_t inner, const int64_t *idx,
                                              int64_t n_idx) {
  int64_t total = outer * n_idx * inner;
  if (total == 0) return cudaSuccess;
  const int threads = 256;
  unsigned blocks = adk_blocks(c, total, threads);
  switch (esize) {
  case 8: index_select_kernel<uint64_t><<<blocks, threads, 0, c->stream>>>((uint64_t *)dst, (const uint64_t *)src, outer, src_dim, inner, idx, n_idx); break;
  case 4: index_select_kernel<uint32_t><<<blocks, threads, 0, c->stream>>>((uint32_t *)dst, (const uint32_t *)src, outer, src_dim, inner, idx, n_idx); break;
  case 2: index_select_kernel<uint16_t><<<blocks, threads, 0, c->stream>>>((uint16_t *)dst, (const uint16_t *)src, outer, src_dim, inner, idx, n_idx); break;
  default: index_select_kernel<uint8_t><<<blocks, threads, 0, c->stream>>>((uint8_t *)dst, (const uint8_t *)src, outer, src_dim, inner, idx, n_idx); break;
  }
  return adk_launched();
}

/* One thread per (a, i) column walks j in order, so repeated indices add up in
 * the CPU's order: deterministic, no atomics. */
template <typename T>
__global__ void index_add_kernel(T *dst, const T *src, int64_t outer, int64_t dst_dim, int64_t inner,
                                 const int64_t *idx, int64_t n_idx) {
  ADK_GRID_LOOP(e, outer * inner) {
    int64_t a = e / inner, i = e % inner;
    for (int64_t j = 0; j < n_idx; j++) {
      T *p = dst + (a * dst_dim + idx[j]) * inner + i;
      *p = *p + src[(a * n_idx + j) * inner + i];
    }
  }
}
__global__ void index_add_any_kernel(void *dst, const void *src, int dtype, int64_t outer, int64_t dst_dim,
                                     int64_t inner, const int64_t *idx, int64_t n_idx) {
  ADK_GRID_LOOP(e, outer * inner) {
    int64_t a = e / inner, i = e % inner;
    for (int64_t j = 0; j < n_idx; j++) {
      int64_t od = (a * dst_dim + idx[j]) * inner + i, os = (a * n_idx + j) * inner + i;
      adk_store_any(dtype, dst, od, adk_load_any(dtype, dst, od) + adk_load_any(dtype, src, os));
    }
  }
}

extern "C" cudaError_t ad_launch_index_add(const adk_ctx *c, void *dst, const void *src, int dtype, int64_t outer,
                                           int64_t dst_dim, int64_t inner, const int64_t *idx, int64_t n_idx) {
  if (outer * inner == 0 || n_idx == 0) return cudaSuccess;
  const int threads = 256;
  unsigned blocks = adk_blocks(c, outer * inner, threads);
  if (dtype == ADK_F32)
    index_add_kernel<float><<<blocks, threads, 0, c->stream>>>((float *)dst, (const float *)src, outer, dst_dim, inner, idx, n_idx);
  else if (dtype == ADK_F64)
    index_add_kernel<double><<<blocks, threads, 0, c->stream>>>((double *)dst, (const double *)src, outer, dst_dim, inner, idx, n_idx);
  else
    index_add_any_kernel<<<blocks, threads, 0, c->stream>>>(dst, src, dtype, outer, dst_dim, inner, idx, n_idx);
  return adk_launched();
}

/* ---- C <- beta * C over a batch of strided matrices (GEMMs with k == 0) ------ */
__global__ void scale_matrix_kernel(void *cm, int dtype, int64_t batch, int64_t stride, int64_t m, int64_t n,
                                    int64_t ld, double beta) {
  ADK_GRID_LOOP(e, batch * m * n) {
    int64_t j = e % n, t = e / n, i = t % m, b = t / m;
    int64_t k = b * stride + i * ld + j;
    adk_store_any(dtype, cm, k, beta == 0.0 ? 0.0 : beta * adk_load_any(dtype, cm, k));
  }
}

extern "C" cudaError_t ad_launch_scale_matrix(const adk_ctx *c, void *cm, int dtype, int64_t batch, int64_t stride,
                                              int64_t m, int64_t n, int64_t ld, double beta) {
  int64_t total = batch * m * n;
  if (total == 0) return cudaSuccess;
  scale_matrix_kernel<<<adk_blocks(c, total, 256), 256, 0, c->stream>>>(cm, dtype, batch, stride, m, n, ld, beta);
  return adk_launched();
}

/* ---- index range check: the first offending value, reported to the host ------ */
__global__ void check_indices_kernel(const void *idx, bool i64, int64_t n, int64_t limit,
                                     unsigned long long *first_pos) {
  ADK_GRID_LOOP(i, n) {
    int64_t v = i64 ? ((const int64_t *)idx)[i] : (int64_t)((const int32_t *)idx)[i];
    if (v < 0 || v >= limit) atomicMin(first_pos, (unsigned long long)i);
  }
}

extern "C" cudaError_t ad_launch_check_indices(const adk_ctx *c, const void *idx, bool i64, int64_t n,
                                               int64_t limit, int *found, int64_t *bad) {
  *found = 0;
  if (n == 0) return cudaSuccess;
  adk_scratch s(c, sizeof(unsigned long long));
  if (!s.p) return cudaErrorMemoryAllocation;
  cudaError_t e = cudaMemsetAsync(s.p, 0xff, sizeof(unsigned long long), c->stream);
  if (e != cudaSuccess) return e;
  check_indices_kernel<<<adk_blocks(c, n, 256), 256, 0, c->stream>>>(idx, i64, n, limit, s.as<unsigned long long>());
  if ((e = adk_launched()) != cudaSuccess) return e;
  unsigned long long pos = 0;
  if ((e = cudaMemcpyAsync(&pos, s.p, sizeof pos, cudaMemcpyDeviceToHost, c->stream)) != cudaSuccess) return e;
  if ((e = cudaStreamSynchronize(c->stream)) != cudaSuccess) return e;
  if (pos != ~0ull) {
    *found = 1;
    if (i64) e = cudaMemcpy(bad, (const int64_t *)idx + pos, sizeof(int64_t), cudaMemcpyDeviceToHost);
    else {
      int32_t v = 0;
      e = cudaMemcpy(&v, (const int32_t *)idx + pos, sizeof v, cudaMemcpyDeviceToHost);
      *bad = v;
    }
  }
  return e;
}
