/* attention.cu: the row kernels of the fused scaled-dot-product attention,
 * beside the row loops of core/cpu/cpu_attention.c. The products (S = scale
 * Q K^T, O = P V and the backward ones) run through cuBLAS in
 * core/cuda/cuda_attention.c over a chunk of (batch x head) slices; these
 * kernels turn a chunk of scores into probabilities (saving the row
 * log-sum-exp), recompute them from the saved log-sum-exp in backward, and
 * form dS = P (dP - rowsum(P dP)). The forward softmax of rows up to 1024
 * keys takes one warp per row with the row in registers (ADM's rows are 64,
 * 256 and 1024 long): a single read of the scores and shuffles instead of
 * block barriers; everything else takes one block per row. */
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

/* ---- one block per row (rows longer than a warp can hold) ---------------- */

/* The probabilities go to P: S itself (O = T, in place) or, for f16/bf16
 * attention, a half copy that feeds the tensor-core products while S and the
 * log-sum-exp stay f32. Three passes over the row (max, sum, write) so that S
 * is only read until the last one, which is what lets P alias S. */
template <typename T, typename O>
__global__ void attention_softmax_kernel(const T *S, O *P, T *lse, int64_t b0, int64_t Lq, int64_t Lk,
                                         adk_attn_mask m, bool causal) {
  const int64_t row = blockIdx.x, bl = row / Lq, i = row % Lq, b = b0 + bl;
  const int64_t mb = m.data ? mask_base(m, b) : 0;
  const T *r = S + row * Lk;
  O *pr = P + row * Lk;
  T mx = (T)-INFINITY;
  for (int64_t j = threadIdx.x; j < Lk; j += blockDim.x) {
    const T v = masked(m, mb, i, j, causal, r[j]);
    mx = (v != v || v > mx) ? v : mx;
  }
  mx = adk_block_max(mx);
  if (mx == (T)-INFINITY) {  /* every key masked: a zero row, not NaN */
    for (int64_t j = threadIdx.x; j < Lk; j += blockDim.x) adk_st(pr + j, (T)0);
    if (threadIdx.x == 0 && lse) lse[b * Lq + i] = (T)-INFINITY;
    return;
  }
  double s = 0;
  for (int64_t j = threadIdx.x; j < Lk; j += blockDim.x) s += (double)at_exp(masked(m, mb, i, j, causal, r[j]) - mx);
  s = adk_block_sum(s);
  const T inv = (T)(1.0 / s);
  for (int64_t j = threadIdx.x; j < Lk; j += blockDim.x)
    adk_st(pr + j, at_exp(masked(m, mb, i, j, causal, r[j]) - mx) * inv);
  if (threadIdx.x == 0 && lse) lse[b * Lq + i] = (T)((double)mx + log(s));
}

/* P = exp(S + mask - lse): into S in place when keep, into Ph (a half copy) when given */
template <typename T, typename O>
__global__ void attention_probs_kernel(T *S, O *Ph, bool keep, const T *lse, int64_t b0, int64_t Lq, int64_t Lk,
                                       adk_attn_mask m, bool causal) {
  const int64_t row = blockIdx.x, bl = row / Lq, i = row % Lq, b = b0 + bl;
  const int64_t mb = m.data ? mask_base(m, b) : 0;
  T *r = S + row * Lk;
  O *hr = Ph ? Ph + row * Lk : NULL;
  const T l = lse[b * Lq + i];
  for (int64_t j = threadIdx.x; j < Lk; j += blockDim.x) {
    const T p = l == (T)-INFINITY ? (T)0 : at_exp(masked(m, mb, i, j, causal, r[j]) - l);
    if (keep) r[j] = p;
    if (hr) adk_st(hr + j, p);
  }
}

/* dS = P (dP - rowsum(P dP)), with P read from Pm, or recomputed from the
 * scores in Pm when lse is given; dS into dP in place when keep, into dSh (a
 * half copy) when given */
template <typename T, typename O>
__global__ void attention_dscores_kernel(const T *Pm, const T *lse, int64_t b0, int64_t Lq, adk_attn_mask m,
                                         bool causal, T *dP, bool keep, O *dSh, int64_t Lk) {
  const int64_t row = blockIdx.x, i = row % Lq, b = b0 + row / Lq;
  const int64_t mb = lse && m.data ? mask_base(m, b) : 0;
  const T l = lse ? lse[b * Lq + i] : (T)0;
  const T *pr = Pm + row * Lk;
  T *dr = dP + row * Lk;
  O *hr = dSh ? dSh + row * Lk : NULL;
#define AT_P(j) (lse ? (l == (T)-INFINITY ? (T)0 : at_exp(masked(m, mb, i, (j), causal, pr[j]) - l)) : pr[j])
  double s = 0;
  for (int64_t j = threadIdx.x; j < Lk; j += blockDim.x) s += (double)AT_P(j) * (double)dr[j];
  s = adk_block_sum(s);
  for (int64_t j = threadIdx.x; j < Lk; j += blockDim.x) {
    const T ds = (T)((double)AT_P(j) * ((double)dr[j] - s));
    if (keep) dr[j] = ds;
    if (hr) adk_st(hr + j, ds);
  }
#undef AT_P
}

/* ---- softmax: one warp per row, the row in registers (Lk <= 32 * PER) ----- */
#define AT_WARPS 4   /* rows per block */

template <typename T, typename O, int PER>
__global__ void attention_softmax_warp(const T *S, O *P, T *lse, int64_t b0, int64_t Lq, int64_t Lk,
                                       adk_attn_mask m, bool causal, int64_t rows) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * AT_WARPS + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int64_t i = row % Lq, b = b0 + row / Lq;
  const int64_t mb = m.data ? mask_base(m, b) : 0;
  const T *r = S + row * Lk;
  O *pr = P + row * Lk;
  T v[PER];
  T mx = (T)-INFINITY;
#pragma unroll
  for (int k = 0; k < PER; k++) {
    const int64_t j = lane + 32 * k;
    v[k] = j < Lk ? masked(m, mb, i, j, causal, r[j]) : (T)-INFINITY;
    mx = (v[k] != v[k] || v[k] > mx) ? v[k] : mx;
  }
  mx = adk_warp_max(mx);
  if (mx == (T)-INFINITY) {  /* every key masked: a zero row, not NaN */
#pragma unroll
    for (int k = 0; k < PER; k++)
      if (lane + 32 * k < Lk) adk_st(pr + lane + 32 * k, (T)0);
    if (lane == 0 && lse) lse[b * Lq + i] = (T)-INFINITY;
    return;
  }
  double s = 0;
#pragma unroll
  for (int k = 0; k < PER; k++) {
    v[k] = lane + 32 * k < Lk ? at_exp(v[k] - mx) : (T)0;
    s += (double)v[k];
  }
  s = adk_warp_sum(s);
  const T inv = (T)(1.0 / s);
#pragma unroll
  for (int k = 0; k < PER; k++)
    if (lane + 32 * k < Lk) adk_st(pr + lane + 32 * k, v[k] * inv);
  if (lane == 0 && lse) lse[b * Lq + i] = (T)((double)mx + log(s));
}

static int at_threads(int64_t Lk) { return Lk >= 1024 ? 256 : Lk >= 256 ? 128 : Lk >= 64 ? 64 : 32; }

/* Launch KERNEL<T, T> (hdtype < 0: no half copy, T by dtype) or KERNEL<float, half>
 * (f32 scores with an f16/bf16 copy) */
#define AT_DISPATCH(dtype, hdtype, T, O, ...)                                                   \
  do {                                                                                          \
    if ((hdtype) < 0) { ADK_DISPATCH_F(dtype, T, { typedef T O; __VA_ARGS__; }); }              \
    else if ((dtype) != ADK_F32) return cudaErrorInvalidValue;                                  \
    else if ((hdtype) == ADK_BF16) { typedef float T; typedef adk_bf16 O; __VA_ARGS__; }        \
    else if ((hdtype) == ADK_F16) { typedef float T; typedef adk_f16 O; __VA_ARGS__; }          \
    else return cudaErrorInvalidValue;                                                          \
  } while (0)

/* the warp kernels' row length bound, rounded up to a power of two: PER = 1..32 */
#define AT_PER(Lk, PER, ...)                                               \
  do {                                                                     \
    if ((Lk) <= 32) { const int PER = 1; __VA_ARGS__; }                    \
    else if ((Lk) <= 64) { const int PER = 2; __VA_ARGS__; }               \
    else if ((Lk) <= 128) { const int PER = 4; __VA_ARGS__; }              \
    else if ((Lk) <= 256) { const int PER = 8; __VA_ARGS__; }              \
    else if ((Lk) <= 512) { const int PER = 16; __VA_ARGS__; }             \
    else { const int PER = 32; __VA_ARGS__; }                              \
  } while (0)
#define AT_WARP_MAX 1024

static unsigned at_warp_blocks(int64_t rows) { return (unsigned)((rows + AT_WARPS - 1) / AT_WARPS); }

extern "C" cudaError_t ad_launch_attention_softmax(const adk_ctx *c, const void *S, void *P, int hdtype, void *lse,
                                                   int dtype, int64_t b0, int64_t nb, int64_t Lq, int64_t Lk,
                                                   const adk_attn_mask *m, bool causal) {
  const int64_t rows = nb * Lq;
  if (rows == 0 || Lk == 0) return cudaSuccess;
  if (rows > INT32_MAX) return cudaErrorInvalidValue;
  if (Lk <= AT_WARP_MAX) {
    AT_DISPATCH(dtype, hdtype, T, O, AT_PER(Lk, PER, (attention_softmax_warp<T, O, PER>
                <<<at_warp_blocks(rows), 32 * AT_WARPS, 0, c->stream>>>((const T *)S, (O *)P, (T *)lse, b0, Lq, Lk,
                                                                        *m, causal, rows))));
  } else {
    AT_DISPATCH(dtype, hdtype, T, O, (attention_softmax_kernel<T, O><<<(unsigned)rows, at_threads(Lk), 0, c->stream>>>(
                                         (const T *)S, (O *)P, (T *)lse, b0, Lq, Lk, *m, causal)));
  }
  return adk_launched();
}

/* probs and dscores stay one block per row at every length: warp-per-row
 * versions of these two (a row's P and dP in registers) measured 1.2x and
 * 4.6x slower than these on an H200 (tests/gpu/RESULTS.md, run 2) */
extern "C" cudaError_t ad_launch_attention_probs(const adk_ctx *c, void *S, void *Ph, int hdtype, bool keep,
                                                 const void *lse, int dtype, int64_t b0, int64_t nb, int64_t Lq,
                                                 int64_t Lk, const adk_attn_mask *m, bool causal) {
  const int64_t rows = nb * Lq;
  if (rows == 0 || Lk == 0) return cudaSuccess;
  if (rows > INT32_MAX) return cudaErrorInvalidValue;
  AT_DISPATCH(dtype, hdtype, T, O, (attention_probs_kernel<T, O><<<(unsigned)rows, at_threads(Lk), 0, c->stream>>>(
                                       (T *)S, (O *)Ph, keep, (const T *)lse, b0, Lq, Lk, *m, causal)));
  return adk_launched();
}

extern "C" cudaError_t ad_launch_attention_dscores(const adk_ctx *c, const void *Pm, const void *lse, int64_t b0,
                                                   int64_t Lq, const adk_attn_mask *m, bool causal, void *dP,
                                                   bool keep, void *dSh, int hdtype, int dtype, int64_t nb,
                                                   int64_t Lk) {
  const int64_t rows = nb * Lq;
  if (rows == 0 || Lk == 0) return cudaSuccess;
  if (rows > INT32_MAX) return cudaErrorInvalidValue;
  AT_DISPATCH(dtype, hdtype, T, O, (attention_dscores_kernel<T, O><<<(unsigned)rows, at_threads(Lk), 0, c->stream>>>(
                                       (const T *)Pm, (const T *)lse, b0, Lq, *m, causal, (T *)dP, keep, (O *)dSh,
                                       Lk)));
  return adk_launched();
}
