/* conv.cu: the two small kernels around the cuDNN convolutions of
 * core/cuda/cuda_dnn.c (the CPU's im2col path folds them into its GEMMs):
 * adding the bias to the output and the bias gradient (sum of dy over batch
 * and pixels, per channel, in double). Any float dtype: f32, f64, and
 * f16/bf16 under autocast.
 *
 * Both see dy / y as N*O planes of S contiguous pixels and move V elements
 * (16 bytes) per access when S is a multiple of V: a run of V then never
 * crosses a plane, so one 32-bit division per run finds its plane. The
 * gradient splits each channel's (n, s) range over a fixed number of slices
 * whose double partials a second kernel adds in slice order: deterministic,
 * and the same bits on any GPU (the split does not depend on the SM count). */
#include "common.cuh"

template <typename T, int V> struct alignas(sizeof(T) * V) conv_vec { T v[V]; };

/* y[n, o, s] += b[o] over n runs of V elements, SV runs per plane; IDX is
 * uint32_t when n fits (cheaper division). Two runs per step, both loaded
 * before either is stored, so each thread keeps two loads in flight. */
template <typename T, int V, typename IDX>
__global__ void conv_bias_add_kernel(T *y, const T *b, IDX n, IDX SV, IDX O) {
  typedef typename adk_acc<T>::type C;
  conv_vec<T, V> *yv = (conv_vec<T, V> *)y;
  const IDX stride = (IDX)blockDim.x * gridDim.x;
  IDX i = (IDX)blockIdx.x * blockDim.x + threadIdx.x;
  for (; i < n; i += 2 * stride) {
    const bool two = n - i > stride;
    conv_vec<T, V> t0 = yv[i], t1;
    const C b0 = adk_ld(b + (i / SV) % O);
    C b1 = 0;
    if (two) { t1 = yv[i + stride]; b1 = adk_ld(b + ((i + stride) / SV) % O); }
#pragma unroll
    for (int u = 0; u < V; u++) adk_st(&t0.v[u], adk_ld(&t0.v[u]) + b0);
    yv[i] = t0;
    if (two) {
#pragma unroll
      for (int u = 0; u < V; u++) adk_st(&t1.v[u], adk_ld(&t1.v[u]) + b1);
      yv[i + stride] = t1;
    }
  }
}

/* run j of channel o: plane n = j / SV, offset j % SV within it */
template <typename T, int V, typename IDX>
ADK_INLINE conv_vec<T, V> grad_run(const T *dy, IDX j, IDX SV, IDX O, IDX o) {
  const IDX n = j / SV, r = j - n * SV;
  return ((const conv_vec<T, V> *)dy)[((int64_t)n * O + o) * SV + r];
}

/* Block (o, g) sums channel o over runs [g*chunk, (g+1)*chunk) of its M = N*SV
 * runs, threads striding along the runs with four loads in flight; into
 * part[g*O + o], or straight into db when there is one slice. Each thread
 * adds its runs in j order. */
template <typename T, int V, typename IDX>
__global__ void conv_bias_grad_kernel(double *part, T *db, const T *dy, IDX M, IDX SV, IDX O, IDX chunk) {
  const IDX o = blockIdx.x, j0 = (IDX)blockIdx.y * chunk, j1 = M - j0 < chunk ? M : j0 + chunk;
  const IDX step = blockDim.x;
  double s = 0;
  for (IDX j = j0 + threadIdx.x; j < j1; j += 4 * step) {
    conv_vec<T, V> t[4];
#pragma unroll
    for (int q = 0; q < 4; q++)
      if (j1 - j > q * step) t[q] = grad_run<T, V, IDX>(dy, j + q * step, SV, O, o);
#pragma unroll
    for (int q = 0; q < 4; q++)
      if (j1 - j > q * step)
#pragma unroll
        for (int u = 0; u < V; u++) s += (double)adk_ld(&t[q].v[u]);
  }
  s = adk_block_sum(s);
  if (threadIdx.x != 0) return;
  if (part) part[(int64_t)blockIdx.y * O + o] = s;
  else adk_st(db + o, (typename adk_acc<T>::type)s);
}

/* db[o] = the G partials of channel o added in slice order */
template <typename T>
__global__ void conv_bias_fold_kernel(T *db, const double *part, int64_t O, int G) {
  ADK_GRID_LOOP(o, O) {
    double s = part[o];
    for (int g = 1; g < G; g++) s += part[(int64_t)g * O + o];
    adk_st(db + o, (typename adk_acc<T>::type)s);
  }
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

/* 16-byte runs when every plane starts 16-byte aligned */
template <typename T> static int conv_vec_len(const void *p, int64_t S) {
  constexpr int V = 16 / sizeof(T);
  return S % V == 0 && (uintptr_t)p % 16 == 0 ? V : 1;
}

/* one block of threads per 512 runs: each thread takes two */
template <typename T>
static cudaError_t bias_add(const adk_ctx *c, T *y, const T *b, int64_t N, int64_t O, int64_t S) {
  constexpr int V = 16 / sizeof(T);
  const int64_t n = N * O * S;
  const cudaStream_t st = c->stream;
  if (conv_vec_len<T>(y, S) == V && n / V <= INT32_MAX)
    conv_bias_add_kernel<T, V, uint32_t><<<adk_blocks(c, (n / V + 1) / 2, 256), 256, 0, st>>>(y, b, n / V, S / V, O);
  else if (n <= INT32_MAX)
    conv_bias_add_kernel<T, 1, uint32_t><<<adk_blocks(c, (n + 1) / 2, 256), 256, 0, st>>>(y, b, n, S, O);
  else
    conv_bias_add_kernel<T, 1, int64_t><<<adk_blocks(c, (n + 1) / 2, 256), 256, 0, st>>>(y, b, n, S, O);
  return adk_launched();
}

extern "C" cudaError_t ad_launch_conv_bias_add(const adk_ctx *c, void *y, const void *b, int dtype, int64_t N,
                                               int64_t O, int64_t S) {
  if (N * O * S == 0) return cudaSuccess;
  CONV_DISPATCH(dtype, T, return bias_add<T>(c, (T *)y, (const T *)b, N, O, S));
  return cudaSuccess;
}

/* about this many blocks (two waves of 8 per SM on a 132-SM GPU), each with at
 * least 1024 runs (one batch of four loads per thread); constants, so the
 * split is the same on every GPU */
enum { CONV_GRAD_BLOCKS = 2048, CONV_GRAD_MIN_RUNS = 1024 };

template <typename T>
static cudaError_t bias_grad(const adk_ctx *c, T *db, const T *dy, int64_t N, int64_t O, int64_t S) {
  constexpr int V = 16 / sizeof(T);
  int v = conv_vec_len<T>(dy, S);
  const bool wide = N * (S / v) > INT32_MAX;   /* 64-bit indices, one element per access */
  if (wide) v = 1;
  const int64_t M = N * (S / v), SV = S / v;
  int64_t G = (CONV_GRAD_BLOCKS + O - 1) / O, most = M / CONV_GRAD_MIN_RUNS;
  if (G > most) G = most;
  if (G < 1) G = 1;
  const int64_t chunk = (M + G - 1) / G;
  if (chunk > 0) G = (M + chunk - 1) / chunk;   /* no empty slice */
  adk_scratch part(c, G > 1 ? (size_t)G * (size_t)O * sizeof(double) : 0);
  if (G > 1 && !part.p) return cudaErrorMemoryAllocation;
  const dim3 grid((unsigned)O, (unsigned)G);
  double *p = part.as<double>();
  if (wide) conv_bias_grad_kernel<T, 1, int64_t><<<grid, 256, 0, c->stream>>>(p, db, dy, M, SV, O, chunk);
  else if (v == V) conv_bias_grad_kernel<T, V, uint32_t><<<grid, 256, 0, c->stream>>>(p, db, dy, M, SV, O, chunk);
  else conv_bias_grad_kernel<T, 1, uint32_t><<<grid, 256, 0, c->stream>>>(p, db, dy, M, SV, O, chunk);
  cudaError_t e = adk_launched();
  if (e != cudaSuccess || G == 1) return e;
  conv_bias_fold_kernel<T><<<adk_blocks(c, O, 256), 256, 0, c->stream>>>(db, p, O, (int)G);
  return adk_launched();
}

extern "C" cudaError_t ad_launch_conv_bias_grad(const adk_ctx *c, void *db, const void *dy, int dtype, int64_t N,
                                                int64_t O, int64_t S) {
  if (O == 0) return cudaSuccess;
  if (O > INT32_MAX) return cudaErrorInvalidValue;
  CONV_DISPATCH(dtype, T, return bias_grad<T>(c, (T *)db, (const T *)dy, N, O, S));
  return cudaSuccess;
}
