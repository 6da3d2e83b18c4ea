/* common.cuh: what every .cu file of the CUDA backend shares: launch
 * configuration and checks, element access by runtime dtype with the CPU's
 * exact conversion rules, and warp/block reductions.
 *
 * Conversions go through mathinl.h (the same f16/bf16 rounding the CPU uses),
 * and the double load/store pair below is ad_load_elem / ad_store_elem of
 * core/tensor.c written for the device, so a kernel that converts through
 * double produces the CPU's bits. */
#ifndef AD_KERNELS_COMMON_CUH
#define AD_KERNELS_COMMON_CUH

#include <stdint.h>
#include <math.h>
#include <cuda_runtime.h>
#include "mathinl.h"
#include "kernels.h"

#define ADK_INLINE static __device__ __forceinline__

/* Blocks for a grid-stride loop over n items: enough to fill the GPU a few
 * times over, never more than the items need. */
static inline unsigned adk_blocks(const adk_ctx *c, int64_t n, int threads) {
  int64_t want = (n + threads - 1) / threads;
  int64_t cap = (int64_t)(c->num_sms > 0 ? c->num_sms : 80) * 32;
  if (want > cap) want = cap;
  if (want < 1) want = 1;
  return (unsigned)want;
}

/* The status of the launch just made: bad configurations surface here. */
static inline cudaError_t adk_launched(void) { return cudaGetLastError(); }

/* Scratch from the caching allocator, freed in stream order (the allocator's
 * blocks are reused only by later work on the same stream). */
struct adk_scratch {
  const adk_ctx *c;
  void *p;
  explicit adk_scratch(const adk_ctx *ctx, size_t n) : c(ctx), p(n ? ctx->scratch_alloc(n, ctx->device) : nullptr) {}
  ~adk_scratch() { if (p) c->scratch_free(p, c->device); }
  adk_scratch(const adk_scratch &) = delete;
  adk_scratch &operator=(const adk_scratch &) = delete;
  template <typename T> T *as() const { return static_cast<T *>(p); }
};

#define ADK_GRID_LOOP(i, n) \
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)blockDim.x * gridDim.x)

/* ---- half types: 16-bit storage, arithmetic in float --------------------- */
struct adk_f16 { uint16_t bits; };
struct adk_bf16 { uint16_t bits; };

template <typename T> struct adk_acc { typedef T type; };          /* compute type of a storage type */
template <> struct adk_acc<adk_f16> { typedef float type; };
template <> struct adk_acc<adk_bf16> { typedef float type; };

ADK_INLINE float adk_ld(const float *p) { return *p; }
ADK_INLINE double adk_ld(const double *p) { return *p; }
ADK_INLINE float adk_ld(const adk_f16 *p) { return ad_f16_to_f32(p->bits); }
ADK_INLINE float adk_ld(const adk_bf16 *p) { return ad_bf16_to_f32(p->bits); }
ADK_INLINE void adk_st(float *p, float v) { *p = v; }
ADK_INLINE void adk_st(double *p, double v) { *p = v; }
ADK_INLINE void adk_st(adk_f16 *p, float v) { p->bits = ad_f32_to_f16(v); }
ADK_INLINE void adk_st(adk_bf16 *p, float v) { p->bits = ad_f32_to_bf16(v); }

/* ---- any dtype through double: ad_load_elem / ad_store_elem -------------- */
ADK_INLINE double adk_load_any(int dt, const void *base, int64_t k) {
  switch (dt) {
  case ADK_F32: return ((const float *)base)[k];
  case ADK_F64: return ((const double *)base)[k];
  case ADK_F16: return ad_f16_to_f32(((const uint16_t *)base)[k]);
  case ADK_BF16: return ad_bf16_to_f32(((const uint16_t *)base)[k]);
  case ADK_I64: return (double)((const int64_t *)base)[k];
  case ADK_I32: return ((const int32_t *)base)[k];
  case ADK_U8: return ((const uint8_t *)base)[k];
  case ADK_BOOL: return ((const uint8_t *)base)[k] != 0;
  default: return 0;
  }
}

ADK_INLINE void adk_store_any(int dt, void *base, int64_t k, double v) {
  switch (dt) {
  case ADK_F32: ((float *)base)[k] = (float)v; break;
  case ADK_F64: ((double *)base)[k] = v; break;
  case ADK_F16: ((uint16_t *)base)[k] = ad_f32_to_f16((float)v); break;
  case ADK_BF16: ((uint16_t *)base)[k] = ad_f32_to_bf16((float)v); break;
  case ADK_I64:
    ((int64_t *)base)[k] = v != v ? 0 : v >= 9.2233720368547758e18 ? INT64_MAX
                         : v <= -9.2233720368547758e18 ? INT64_MIN : (int64_t)v;
    break;
  case ADK_I32:
    ((int32_t *)base)[k] = v != v ? 0 : v >= 2147483647.0 ? INT32_MAX : v <= -2147483648.0 ? INT32_MIN : (int32_t)v;
    break;
  case ADK_U8: {
    double w = v != v ? 0 : v < 0 ? fmod(256.0 + fmod(trunc(v), 256.0), 256.0) : fmod(trunc(v), 256.0);
    ((uint8_t *)base)[k] = (uint8_t)w;
    break;
  }
  case ADK_BOOL: ((uint8_t *)base)[k] = v != 0; break;
  default: break;
  }
}

/* f32/f64 element k of a buffer whose dtype is known only at run time */
ADK_INLINE double adk_ldf(const void *p, int64_t k, bool f64) {
  return f64 ? ((const double *)p)[k] : (double)((const float *)p)[k];
}
ADK_INLINE void adk_stf(void *p, int64_t k, double v, bool f64) {
  if (f64) ((double *)p)[k] = v;
  else ((float *)p)[k] = (float)v;
}

/* ---- strided iteration --------------------------------------------------- */
/* Host side: drop size-1 dims and merge a dim into its outer neighbour when
 * every operand's strides chain, so contiguous and broadcast-over-contiguous
 * operands become one flat run. A 0-d walk becomes one dim of size 1. */
static inline void adk_iter_coalesce(adk_iter *it) {
  int nd = 0;
  for (int d = 0; d < it->ndim; d++) {
    if (it->shape[d] == 1) continue;
    it->shape[nd] = it->shape[d];
    for (int k = 0; k < it->nops; k++) it->strides[k][nd] = it->strides[k][d];
    nd++;
  }
  if (nd == 0) {
    it->ndim = 1;
    it->shape[0] = 1;
    for (int k = 0; k < it->nops; k++) it->strides[k][0] = 0;
    return;
  }
  /* merge from the inside out: dim d-1 folds into d when strides chain */
  int out = nd - 1;
  int64_t shape[ADK_MAX_DIMS], str[ADK_MAX_OPS][ADK_MAX_DIMS];
  shape[out] = it->shape[nd - 1];
  for (int k = 0; k < it->nops; k++) str[k][out] = it->strides[k][nd - 1];
  for (int d = nd - 2; d >= 0; d--) {
    bool chain = true;
    for (int k = 0; k < it->nops && chain; k++)
      chain = it->strides[k][d] == str[k][out] * shape[out];
    if (chain) {
      shape[out] *= it->shape[d];
    } else {
      out--;
      shape[out] = it->shape[d];
      for (int k = 0; k < it->nops; k++) str[k][out] = it->strides[k][d];
    }
  }
  int n = nd - out;
  for (int d = 0; d < n; d++) {
    it->shape[d] = shape[out + d];
    for (int k = 0; k < it->nops; k++) it->strides[k][d] = str[k][out + d];
  }
  it->ndim = n;
}

static inline int64_t adk_iter_numel(const adk_iter *it) {
  int64_t n = 1;
  for (int d = 0; d < it->ndim; d++) n *= it->shape[d];
  return n;
}

/* After coalescing: one dim where every present operand has stride 1 or 0
 * (a contiguous run, possibly with scalar operands). */
static inline bool adk_iter_is_flat(const adk_iter *it) {
  if (it->ndim != 1) return false;
  for (int k = 0; k < it->nops; k++)
    if (it->data[k] && it->strides[k][0] != 1 && it->strides[k][0] != 0) return false;
  return true;
}

/* Device side: element offsets of linear index i for every operand; IDX is
 * uint32_t when the walk has fewer than 2^31 elements (cheaper division). */
template <typename IDX, int NOPS>
ADK_INLINE void adk_offsets(const adk_iter &it, IDX i, int64_t *off) {
#pragma unroll
  for (int k = 0; k < NOPS; k++) off[k] = 0;
  for (int d = it.ndim - 1; d >= 0; d--) {
    IDX sz = (IDX)it.shape[d];
    IDX q = i / sz, r = i - q * sz;
    i = q;
#pragma unroll
    for (int k = 0; k < NOPS; k++) off[k] += (int64_t)r * it.strides[k][d];
  }
}

/* ---- reductions ---------------------------------------------------------- */
template <typename T> ADK_INLINE T adk_warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <typename T> ADK_INLINE T adk_warp_max(T v) {
  for (int o = 16; o > 0; o >>= 1) { T u = __shfl_xor_sync(0xffffffffu, v, o); v = (v != v || v > u) ? v : u; }
  return v;
}

/* Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets
 * the total. The fixed tree makes the result independent of timing. */
template <typename T> ADK_INLINE T adk_block_sum(T v) {
  __shared__ T part[32];
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = adk_warp_sum(v);
  __syncthreads();                      /* part[] may still be read by a previous call */
  if (lane == 0) part[wid] = v;
  __syncthreads();
  T t = lane < nw ? part[lane] : (T)0;
  return adk_warp_sum(t);
}
/* Max (NaN-propagating) over the block, same contract */
template <typename T> ADK_INLINE T adk_block_max(T v) {
  __shared__ T part[32];
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = adk_warp_max(v);
  __syncthreads();
  if (lane == 0) part[wid] = v;
  __syncthreads();
  T t = lane < nw ? part[lane] : (T)-INFINITY;
  return adk_warp_max(t);
}

/* Launch a kernel on T = float or double by the runtime dtype */
#define ADK_DISPATCH_F(dtype, T, ...)                                        \
  do {                                                                       \
    if ((dtype) == ADK_F64) { typedef double T; __VA_ARGS__; }               \
    else if ((dtype) == ADK_F32) { typedef float T; __VA_ARGS__; }           \
    else return cudaErrorInvalidValue;                                       \
  } while (0)

#endif
