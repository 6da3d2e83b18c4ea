/* softmax.cu: softmax / log_softmax along one dim on the GPU, forward and
 * backward, beside core/cpu/cpu_softmax.c. x and y are contiguous
 * (outer, L, inner). Max-subtracted, sums in double, the f32 exponentials in
 * f32 as on the CPU. inner == 1 (rows): one block per row; otherwise one
 * thread per column, reading along L with stride inner (coalesced across the
 * column index). */
#include "common.cuh"

ADK_INLINE float sm_exp(float v) { return expf(v); }
ADK_INLINE double sm_exp(double v) { return exp(v); }

template <typename T>
__global__ void softmax_rows_fwd_kernel(T *y, const T *x, int64_t L, bool lg) {
  const T *xr = x + (int64_t)blockIdx.x * L;
  T *yr = y + (int64_t)blockIdx.x * L;
  T mx = (T)-INFINITY;
  for (int64_t l = threadIdx.x; l < L; l += blockDim.x) mx = (xr[l] != xr[l] || xr[l] > mx) ? xr[l] : mx;
  mx = adk_block_max(mx);
  double s = 0;
  if (lg) {
    for (int64_t l = threadIdx.x; l < L; l += blockDim.x) s += (double)sm_exp(xr[l] - mx);
    s = adk_block_sum(s);
    const T lse = (T)((double)mx + log(s));
    for (int64_t l = threadIdx.x; l < L; l += blockDim.x) yr[l] = xr[l] - lse;
  } else {
    for (int64_t l = threadIdx.x; l < L; l += blockDim.x) {
      const T e = sm_exp(xr[l] - mx);
      yr[l] = e;
      s += (double)e;
    }
    s = adk_block_sum(s);
    const T inv = (T)(1.0 / s);
    for (int64_t l = threadIdx.x; l < L; l += blockDim.x) yr[l] *= inv;
  }
}

template <typename T>
__global__ void softmax_cols_fwd_kernel(T *y, const T *x, int64_t outer, int64_t L, int64_t inner, bool lg) {
  ADK_GRID_LOOP(t, outer * inner) {
    const int64_t o = t / inner, j = t % inner;
    const T *xc = x + o * L * inner + j;
    T *yc = y + o * L * inner + j;
    double mx = -INFINITY;
    for (int64_t l = 0; l < L; l++) { double v = (double)xc[l * inner]; mx = (v != v || v > mx) ? v : mx; }
    double s = 0;
    for (int64_t l = 0; l < L; l++) {
      double e = (double)sm_exp((T)((double)xc[l * inner] - mx));
      s += e;
      if (!lg) yc[l * inner] = (T)e;
    }
    const double k = lg ? mx + log(s) : 1.0 / s;
    for (int64_t l = 0; l < L; l++) {
      if (lg) yc[l * inner] = (T)((double)xc[l * inner] - k);
      else yc[l * inner] = (T)((double)yc[l * inner] * k);
    }
  }
}

static int sm_threads(int64_t L) { return L >= 2048 ? 512 : L >= 512 ? 256 : L >= 128 ? 128 : 64; }

extern "C" cudaError_t ad_launch_softmax_fwd(const adk_ctx *c, void *y, const void *x, int dtype, int64_t outer,
                                             int64_t L, int64_t inner, bool log) {
  if (outer * L * inner == 0) return cudaSuccess;
  if (inner == 1) {
    if (outer > INT32_MAX) return cudaErrorInvalidValue;
    ADK_DISPATCH_F(dtype, T, (softmax_rows_fwd_kernel<T><<<(unsigned)outer, sm_threads(L), 0, c->stream>>>(
                                (T *)y, (const T *)x, L, log)));
  } else {
    ADK_DISPATCH_F(dtype, T, (softmax_cols_fwd_kernel<T><<<adk_blocks(c, outer * inner, 128), 128, 0, c->stream>>>(
                                (T *)y, (const T *)x, outer, L, inner, log)));
  }
  return adk_launched();
}

/* softmax: dx = y (dy - sum(dy y)); log_softmax: dx = dy - exp(y) sum(dy) */
template <typename T>
__global__ void softmax_rows_bwd_kernel(T *dx, const T *dy, const T *y, int64_t L, bool lg) {
  const int64_t base = (int64_t)blockIdx.x * L;
  double s = 0;
  for (int64_t l = threadIdx.x; l < L; l += blockDim.x)
    s += lg ? (double)dy[base + l] : (double)dy[base + l] * (double)y[base + l];
  const T sf = (T)adk_block_sum(s);
  for (int64_t l = threadIdx.x; l < L; l += blockDim.x) {
    const T g = dy[base + l], yv = y[base + l];
    dx[base + l] = lg ? g - sm_exp(yv) * sf : yv * (g - sf);
  }
}

template <typename T>
__global__ void softmax_cols_bwd_kernel(T *dx, const T *dy, const T *y, int64_t outer, int64_t L, int64_t inner,
                                        bool lg) {
  ADK_GRID_LOOP(t, outer * inner) {
    const int64_t o = t / inner, j = t % inner, base = o * L * inner + j;
    double s = 0;
    for (int64_t l = 0; l < L; l++) {
      const int64_t i = base + l * inner;
      s += lg ? (double)dy[i] : (double)dy[i] * (double)y[i];
    }
    for (int64_t l = 0; l < L; l++) {
      const int64_t i = base + l * inner;
      const double g = (double)dy[i], yv = (double)y[i];
      dx[i] = (T)(lg ? g - (double)sm_exp(y[i]) * s : yv * (g - s));
    }
  }
}

extern "C" cudaError_t ad_launch_softmax_bwd(const adk_ctx *c, void *dx, const void *dy, const void *y, int dtype,
                                             int64_t outer, int64_t L, int64_t inner, bool log) {
  if (outer * L * inner == 0) return cudaSuccess;
  if (inner == 1) {
    if (outer > INT32_MAX) return cudaErrorInvalidValue;
    ADK_DISPATCH_F(dtype, T, (softmax_rows_bwd_kernel<T><<<(unsigned)outer, sm_threads(L), 0, c->stream>>>(
                                (T *)dx, (const T *)dy, (const T *)y, L, log)));
  } else {
    ADK_DISPATCH_F(dtype, T, (softmax_cols_bwd_kernel<T><<<adk_blocks(c, outer * inner, 128), 128, 0, c->stream>>>(
                                (T *)dx, (const T *)dy, (const T *)y, outer, L, inner, log)));
  }
  return adk_launched();
}
