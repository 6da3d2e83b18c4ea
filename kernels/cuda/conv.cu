/* conv.cu: the two small kernels around the cuDNN convolutions of
 * core/cuda/cuda_dnn.c (the CPU's im2col path folds them into its GEMMs):
 * adding the bias to the output and the bias gradient (sum of dy over batch
 * and pixels, per channel, in double, one block per channel: deterministic).
 * Any float dtype: f32, f64, and f16/bf16 under autocast. */
#include "common.cuh"

template <typename T>
__global__ void conv_bias_add_kernel(T *y, const T *b, int64_t N, int64_t O, int64_t S) {
  ADK_GRID_LOOP(k, N * O * S) {
    const int64_t o = (k / S) % O;
    adk_st(y + k, adk_ld(y + k) + adk_ld(b + o));
  }
}

template <typename T>
__global__ void conv_bias_grad_kernel(T *db, const T *dy, int64_t N, int64_t O, int64_t S) {
  const int64_t o = blockIdx.x, M = N * S;
  double s = 0;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) s += (double)adk_ld(dy + ((j / S) * O + o) * S + j % S);
  s = adk_block_sum(s);
  if (threadIdx.x == 0) adk_st(db + o, (typename adk_acc<T>::type)s);
}

#define CONV_DISPATCH(dtype, T, ...)                                         \
  do {                                                                       \
    switch (dtype) {                                                         \
    case ADK_F32: { typedef float T; __VA_ARGS__; break; }                   \
    case ADK_F64: { typedef double T; __VA_ARGS__; break; }                  \
    case ADK_F16: { typedef adk_f16 T; __VA_ARGS__; break; }                 \
    case ADK_BF16: { typedef adk_bf16 T; __VA_ARGS__; break; }               \
    default: return cudaErrorInvalidValue;                                   \
    }                                                                        \
  } while (0)

extern "C" cudaError_t ad_launch_conv_bias_add(const adk_ctx *c, void *y, const void *b, int dtype, int64_t N,
                                               int64_t O, int64_t S) {
  const int64_t n = N * O * S;
  if (n == 0) return cudaSuccess;
  CONV_DISPATCH(dtype, T, (conv_bias_add_kernel<T><<<adk_blocks(c, n, 256), 256, 0, c->stream>>>((T *)y, (const T *)b,
                                                                                                 N, O, S)));
  return adk_launched();
}

extern "C" cudaError_t ad_launch_conv_bias_grad(const adk_ctx *c, void *db, const void *dy, int dtype, int64_t N,
                                                int64_t O, int64_t S) {
  if (O == 0) return cudaSuccess;
  if (O > INT32_MAX) return cudaErrorInvalidValue;
  CONV_DISPATCH(dtype, T, (conv_bias_grad_kernel<T><<<(unsigned)O, 256, 0, c->stream>>>((T *)db, (const T *)dy, N, O,
                                                                                       S)));
  return adk_launched();
}
