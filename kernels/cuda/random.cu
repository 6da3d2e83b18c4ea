/* random.cu: Philox random fills on the GPU, beside ad_cpu_random_fill in
 * core/cpu/cpu_base.c. Element i of a draw (seed, offset) comes from Philox
 * block offset + i/2 through mathinl.h's functions, so for the same generator
 * state the GPU produces the CPU's numbers: uniforms and integers bit for bit
 * (pure integer and exactly rounded arithmetic); normals use log, sqrt, sin
 * and cos in double, where the CUDA and glibc results can differ in the last
 * bit of the double, which survives rounding to f32 only when a value lies
 * within an ulp of an f32 rounding boundary. */
#include "common.cuh"

/* one thread per Philox block: elements 2j and 2j+1 */
__global__ void random_fill_kernel(void *dst, int dtype, int64_t n, int kind, double a, double b, uint64_t seed,
                                   uint64_t offset) {
  const int64_t pairs = (n + 1) / 2;
  ADK_GRID_LOOP(j, pairs) {
    double u, v;
    if (kind == 0) {
      ad_philox_uniform_pair(seed, offset, (uint64_t)j, &u, &v);
      /* a + (b - a) * u rounded as the CPU rounds it: no fused multiply-add */
      u = __dadd_rn(a, __dmul_rn(b - a, u));
      v = __dadd_rn(a, __dmul_rn(b - a, v));
    } else {
      ad_philox_normal_pair(seed, offset, (uint64_t)j, &u, &v);
      u = __dadd_rn(a, __dmul_rn(b, u));
      v = __dadd_rn(a, __dmul_rn(b, v));
    }
    if (dtype == ADK_F32) {
      ((float *)dst)[2 * j] = (float)u;
      if (2 * j + 1 < n) ((float *)dst)[2 * j + 1] = (float)v;
    } else if (dtype == ADK_F64) {
      ((double *)dst)[2 * j] = u;
      if (2 * j + 1 < n) ((double *)dst)[2 * j + 1] = v;
    } else {
      adk_store_any(dtype, dst, 2 * j, u);
      if (2 * j + 1 < n) adk_store_any(dtype, dst, 2 * j + 1, v);
    }
  }
}

__global__ void random_int_kernel(void *dst, int dtype, int64_t n, int64_t lo, uint64_t range, uint64_t seed,
                                  uint64_t offset) {
  ADK_GRID_LOOP(i, n) {
    int64_t v = lo + (int64_t)(ad_philox_bits(seed, offset, (uint64_t)i) % range);
    if (dtype == ADK_I64) ((int64_t *)dst)[i] = v;
    else adk_store_any(dtype, dst, i, (double)v);
  }
}

extern "C" cudaError_t ad_launch_random_fill(const adk_ctx *c, void *dst, int dtype, int64_t n, int kind, double a,
                                             double b, uint64_t seed, uint64_t offset) {
  if (n == 0) return cudaSuccess;
  const int threads = 256;
  if (kind == 2) {
    uint64_t range = (uint64_t)((int64_t)b - (int64_t)a);
    if (range == 0) return cudaErrorInvalidValue;
    random_int_kernel<<<adk_blocks(c, n, threads), threads, 0, c->stream>>>(dst, dtype, n, (int64_t)a, range, seed,
                                                                            offset);
  } else {
    random_fill_kernel<<<adk_blocks(c, (n + 1) / 2, threads), threads, 0, c->stream>>>(dst, dtype, n, kind, a, b,
                                                                                      seed, offset);
  }
  return adk_launched();
}
