/* attention.cu: the row kernels of the fused scaled-dot-product attention,
 * beside the row loops of core/cpu/cpu_attention.c. The products (S = scale
 * Q K^T, O = P V and the backward ones) run through cuBLAS in
 * core/cuda/cuda_attention.c over a chunk of (batch x head) slices; these
 * kernels turn a chunk of scores into probabilities (saving the row
 * log-sum-exp), recompute them from the saved log-sum-exp in backward, and
 * form dS = P (dP - rowsum(P dP)). One block per score row. */
#include "common.cuh"

ADK_INLINE float at_exp(float v) { return expf(v); }
ADK_INLINE double at_exp(double v) { return exp(v); }

/* offset of slice b's mask plane: the batch index unravelled over bshape */
ADK_INLINE int64_t mask_base(const adk_attn_mask &m, int64_t b) {
  int64_t off = 0;
  for (int d = m.nbatch - 1; d >= 0; d--) {
    off += (b % m.bshape[d]) * m.mstrides[d];
    b /= m.bshape[d];
  }
  return off;
}

/* the masked score of row i, column j (s: the scaled score) */
template <typename T>
ADK_INLINE T masked(const adk_attn_mask &m, int64_t mb, int64_t i, int64_t j, bool causal, T s) {
  if (causal && j > i) return (T)-INFINITY;
  if (!m.data) return s;
  const int64_t k = mb + i * m.mstrides[m.nbatch] + j * m.mstrides[m.nbatch + 1];
  if (m.dtype == ADK_BOOL) return ((const uint8_t *)m.data)[k] ? s : (T)-INFINITY;
  return s + ((const T *)m.data)[k];
}

template <typename T>
__global__ void attention_softmax_kernel(T *S, T *lse, int64_t b0, int64_t Lq, int64_t Lk, adk_attn_mask m,
                                         bool causal) {
  const int64_t row = blockIdx.x, bl = row / Lq, i = row % Lq, b = b0 + bl;
  const int64_t mb = m.data ? mask_base(m, b) : 0;
  T *r = S + row * Lk;
  T mx = (T)-INFINITY;
  for (int64_t j = threadIdx.x; j < Lk; j += blockDim.x) {
    const T v = masked(m, mb, i, j, causal, r[j]);
    r[j] = v;
    mx = (v != v || v > mx) ? v : mx;
  }
  mx = adk_block_max(mx);
  if (mx == (T)-INFINITY) {  /* every key masked: a zero row, not NaN */
    for (int64_t j = threadIdx.x; j < Lk; j += blockDim.x) r[j] = 0;
    if (threadIdx.x == 0 && lse) lse[b * Lq + i] = (T)-INFINITY;
    return;
  }
  double s = 0;
  for (int64_t j = threadIdx.x; j < Lk; j += blockDim.x) {
    const T e = at_exp(r[j] - mx);
    r[j] = e;
    s += (double)e;
  }
  s = adk_block_sum(s);
  const T inv = (T)(1.0 / s);
  for (int64_t j = threadIdx.x; j < Lk; j += blockDim.x) r[j] *= inv;
  if (threadIdx.x == 0 && lse) lse[b * Lq + i] = (T)((double)mx + log(s));
}

template <typename T>
__global__ void attention_probs_kernel(T *S, const T *lse, int64_t b0, int64_t Lq, int64_t Lk, adk_attn_mask m,
                                       bool causal) {
  const int64_t row = blockIdx.x, bl = row / Lq, i = row % Lq, b = b0 + bl;
  const int64_t mb = m.data ? mask_base(m, b) : 0;
  T *r = S + row * Lk;
  const T l = lse[b * Lq + i];
  for (int64_t j = threadIdx.x; j < Lk; j += blockDim.x)
    r[j] = l == (T)-INFINITY ? (T)0 : at_exp(masked(m, mb, i, j, causal, r[j]) - l);
}

template <typename T>
__global__ void attention_dscores_kernel(const T *P, T *dP, int64_t Lk) {
  const T *pr = P + (int64_t)blockIdx.x * Lk;
  T *dr = dP + (int64_t)blockIdx.x * Lk;
  double s = 0;
  for (int64_t j = threadIdx.x; j < Lk; j += blockDim.x) s += (double)pr[j] * (double)dr[j];
  s = adk_block_sum(s);
  for (int64_t j = threadIdx.x; j < Lk; j += blockDim.x) dr[j] = (T)((double)pr[j] * ((double)dr[j] - s));
}

static int at_threads(int64_t Lk) { return Lk >= 1024 ? 256 : Lk >= 256 ? 128 : Lk >= 64 ? 64 : 32; }

extern "C" cudaError_t ad_launch_attention_softmax(const adk_ctx *c, void *S, void *lse, int dtype, int64_t b0,
                                                   int64_t nb, int64_t Lq, int64_t Lk, const adk_attn_mask *m,
                                                   bool causal) {
  const int64_t rows = nb * Lq;
  if (rows == 0 || Lk == 0) return cudaSuccess;
  if (rows > INT32_MAX) return cudaErrorInvalidValue;
  ADK_DISPATCH_F(dtype, T, (attention_softmax_kernel<T><<<(unsigned)rows, at_threads(Lk), 0, c->stream>>>(
                              (T *)S, (T *)lse, b0, Lq, Lk, *m, causal)));
  return adk_launched();
}

extern "C" cudaError_t ad_launch_attention_probs(const adk_ctx *c, void *S, const void *lse, int dtype, int64_t b0,
                                                 int64_t nb, int64_t Lq, int64_t Lk, const adk_attn_mask *m,
                                                 bool causal) {
  const int64_t rows = nb * Lq;
  if (rows == 0 || Lk == 0) return cudaSuccess;
  if (rows > INT32_MAX) return cudaErrorInvalidValue;
  ADK_DISPATCH_F(dtype, T, (attention_probs_kernel<T><<<(unsigned)rows, at_threads(Lk), 0, c->stream>>>(
                              (T *)S, (const T *)lse, b0, Lq, Lk, *m, causal)));
  return adk_launched();
}

extern "C" cudaError_t ad_launch_attention_dscores(const adk_ctx *c, const void *P, void *dP, int dtype,
                                                   int64_t rows, int64_t Lk) {
  if (rows == 0 || Lk == 0) return cudaSuccess;
  if (rows > INT32_MAX) return cudaErrorInvalidValue;
  ADK_DISPATCH_F(dtype, T, (attention_dscores_kernel<T><<<(unsigned)rows, at_threads(Lk), 0, c->stream>>>(
                              (const T *)P, (T *)dP, Lk)));
  return adk_launched();
}
