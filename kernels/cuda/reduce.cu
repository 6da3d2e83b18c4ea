/* reduce.cu: the reduction family on the GPU, beside core/cpu/cpu_reduce.c.
 * The input is a contiguous (outer, r, inner) block, reduced along r.
 *
 * Every value op is built from the CPU's accumulation primitives (sum, prod,
 * max, min, sum|x|, sum x^2, max|x|, min|x|, sum|x|^p, count of nonzeros,
 * sum exp(x - aux), sum (x - aux)^2) accumulated in double, with var and
 * logsumexp in two passes (mean, then squared deviations; max, then shifted
 * exponentials), exactly as on the CPU. One kernel accumulates a primitive
 * into a double per output:
 *  - inner == 1: a warp (r <= 512) or a block per output, threads striding
 *    along the contiguous run;
 *  - inner > 1: 32 adjacent columns x 8 row lanes per block, coalesced rows;
 * and when there are too few outputs to fill the GPU, r is split over
 * gridDim.y into partials that a second kernel folds in split order. All
 * combining is in fixed trees, so results do not depend on timing. */
#include "common.cuh"

enum {  /* ad_redop */
  RED_SUM, RED_PROD, RED_MAX, RED_MIN, RED_NORM1, RED_NORM2, RED_NORMINF, RED_NORMNEGINF, RED_NORM0, RED_NORMP,
  RED_LOGSUMEXP, RED_VAR, RED_ALL, RED_ANY
};
enum { P_SUM, P_PROD, P_MAX, P_MIN, P_SUMABS, P_SUMSQ, P_MAXABS, P_MINABS, P_SUMPOW, P_NNZ, P_SUMEXP, P_SUMSQDEV };

ADK_INLINE double rd_identity(int pr) {
  switch (pr) {
  case P_PROD: return 1.0;
  case P_MAX: return -INFINITY;
  case P_MIN: case P_MINABS: return INFINITY;
  default: return 0.0;
  }
}
/* max/min keep a NaN once they meet one */
ADK_INLINE double rd_combine(int pr, double a, double b) {
  switch (pr) {
  case P_PROD: return a * b;
  case P_MAX: case P_MAXABS: return (a != a || a > b) ? a : b;
  case P_MIN: case P_MINABS: return (a != a || a < b) ? a : b;
  default: return a + b;
  }
}
ADK_INLINE double rd_acc(int pr, double acc, double v, double aux, double p) {
  switch (pr) {
  case P_SUM: return acc + v;
  case P_PROD: return acc * v;
  case P_MAX: return (v != v || v > acc) ? v : acc;
  case P_MIN: return (v != v || v < acc) ? v : acc;
  case P_SUMABS: return acc + fabs(v);
  case P_SUMSQ: return acc + v * v;
  case P_MAXABS: { double w = fabs(v); return (w != w || w > acc) ? w : acc; }
  case P_MINABS: { double w = fabs(v); return (w != w || w < acc) ? w : acc; }
  case P_SUMPOW: return acc + pow(fabs(v), p);
  case P_NNZ: return acc + (v != 0);
  case P_SUMEXP: return acc + exp(v - aux);
  case P_SUMSQDEV: { double d = v - aux; return acc + d * d; }
  default: return acc;
  }
}

ADK_INLINE double warp_combine(int pr, double v) {
  for (int o = 16; o > 0; o >>= 1) v = rd_combine(pr, v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/* inner == 1. TPO threads per output (32 or 256); split y of gridDim.y takes
 * rows [y*chunk, (y+1)*chunk). out[y * outer + o] */
template <typename T, int TPO>
__global__ void reduce_rows_kernel(double *out, const T *x, int64_t outer, int64_t r, int pr, const double *aux,
                                   double p) {
  __shared__ double part[32];
  const int per_block = blockDim.x / TPO;
  const int64_t o = (int64_t)blockIdx.x * per_block + threadIdx.x / TPO;
  const int t = threadIdx.x % TPO;
  const int64_t chunk = (r + gridDim.y - 1) / gridDim.y, i0 = blockIdx.y * chunk;
  const int64_t i1 = i0 + chunk < r ? i0 + chunk : r;
  double acc = rd_identity(pr);
  if (o < outer) {
    const T *row = x + o * r;
    const double a = aux ? aux[o] : 0.0;
    for (int64_t i = i0 + t; i < i1; i += TPO) acc = rd_acc(pr, acc, (double)row[i], a, p);
  }
  acc = warp_combine(pr, acc);
  if (TPO > 32) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    if (lane == 0) part[wid] = acc;
    __syncthreads();
    if (wid == 0) {
      acc = lane < TPO / 32 ? part[lane] : rd_identity(pr);
      acc = warp_combine(pr, acc);
    }
    if (threadIdx.x == 0 && o < outer) out[(int64_t)blockIdx.y * outer + o] = acc;
  } else if (t == 0 && o < outer) {
    out[(int64_t)blockIdx.y * outer + o] = acc;
  }
}

/* inner > 1: block (32, 8) covers 32 adjacent columns of one outer index */
template <typename T>
__global__ void reduce_cols_kernel(double *out, const T *x, int64_t outer, int64_t r, int64_t inner, int pr,
                                   const double *aux, double p) {
  __shared__ double sh[8][33];
  const int64_t tiles = (inner + 31) / 32;
  const int64_t o = blockIdx.x / tiles, j = (blockIdx.x % tiles) * 32 + threadIdx.x;
  const int64_t chunk = (r + gridDim.y - 1) / gridDim.y, i0 = blockIdx.y * chunk;
  const int64_t i1 = i0 + chunk < r ? i0 + chunk : r;
  double acc = rd_identity(pr);
  if (j < inner) {
    const double a = aux ? aux[o * inner + j] : 0.0;
    const T *col = x + o * r * inner + j;
    for (int64_t i = i0 + threadIdx.y; i < i1; i += 8) acc = rd_acc(pr, acc, (double)col[i * inner], a, p);
  }
  sh[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < inner) {
    for (int k = 1; k < 8; k++) acc = rd_combine(pr, acc, sh[k][threadIdx.x]);
    out[(int64_t)blockIdx.y * outer * inner + o * inner + j] = acc;
  }
}

/* fold the splits in order: out[k] = combine over s of part[s * n + k] */
__global__ void reduce_splits_kernel(double *out, const double *part, int64_t n, int splits, int pr) {
  ADK_GRID_LOOP(k, n) {
    double acc = part[k];
    for (int s = 1; s < splits; s++) acc = rd_combine(pr, acc, part[(int64_t)s * n + k]);
    out[k] = acc;
  }
}

/* acc[outer * inner] (double) <- primitive pr over r, with aux per output */
template <typename T>
static cudaError_t reduce_pass(const adk_ctx *c, double *acc, const T *x, int64_t outer, int64_t r, int64_t inner,
                               int pr, const double *aux, double p) {
  const int64_t nout = outer * inner;
  const int64_t fill = (int64_t)(c->num_sms > 0 ? c->num_sms : 80) * 4;
  int64_t blocks_x;
  if (inner == 1) blocks_x = r <= 512 ? (outer + 7) / 8 : outer;
  else blocks_x = outer * ((inner + 31) / 32);
  int splits = 1;
  if (blocks_x < fill && r >= 4096) {
    int64_t want = (fill + blocks_x - 1) / blocks_x, most = r / 2048;
    splits = (int)(want < most ? want : most);
    if (splits > 1024) splits = 1024;
    if (splits < 1) splits = 1;
  }
  if (blocks_x > INT32_MAX) return cudaErrorInvalidValue;
  adk_scratch part(c, splits > 1 ? (size_t)splits * (size_t)nout * sizeof(double) : 0);
  if (splits > 1 && !part.p) return cudaErrorMemoryAllocation;
  double *dst = splits > 1 ? part.as<double>() : acc;
  dim3 grid((unsigned)blocks_x, (unsigned)splits);
  if (inner == 1) {
    if (r <= 512) reduce_rows_kernel<T, 32><<<grid, 256, 0, c->stream>>>(dst, x, outer, r, pr, aux, p);
    else reduce_rows_kernel<T, 256><<<grid, 256, 0, c->stream>>>(dst, x, outer, r, pr, aux, p);
  } else {
    reduce_cols_kernel<T><<<grid, dim3(32, 8), 0, c->stream>>>(dst, x, outer, r, inner, pr, aux, p);
  }
  cudaError_t e = adk_launched();
  if (e != cudaSuccess || splits == 1) return e;
  reduce_splits_kernel<<<adk_blocks(c, nout, 256), 256, 0, c->stream>>>(acc, part.as<double>(), nout, splits, pr);
  return adk_launched();
}

/* y[k] = the op's value from its accumulations a (and b for two-pass ops) */
template <typename T>
__global__ void reduce_final_kernel(T *y, const double *a, const double *b, int64_t n, int op, double r,
                                    double param) {
  ADK_GRID_LOOP(k, n) {
    double v;
    switch (op) {
    case RED_NORM2: v = sqrt(a[k]); break;
    case RED_NORMP: v = pow(a[k], 1.0 / param); break;
    case RED_LOGSUMEXP: v = isfinite(a[k]) ? a[k] + log(b[k]) : a[k]; break;
    case RED_VAR: { double denom = r - param; v = b[k] / (denom > 0 ? denom : 0.0); break; }
    default: v = a[k]; break;
    }
    y[k] = (T)v;
  }
}
__global__ void reduce_mean_kernel(double *m, int64_t n, double r) {
  ADK_GRID_LOOP(k, n) m[k] /= r;
}

template <typename T>
static cudaError_t reduce_typed(const adk_ctx *c, T *y, const T *x, int64_t outer, int64_t r, int64_t inner, int op,
                                double param) {
  const int64_t n = outer * inner;
  adk_scratch acc(c, 2 * (size_t)n * sizeof(double));
  if (!acc.p) return cudaErrorMemoryAllocation;
  double *a = acc.as<double>(), *b = a + n;
  cudaError_t e;
  switch (op) {
  case RED_LOGSUMEXP:
    if ((e = reduce_pass<T>(c, a, x, outer, r, inner, P_MAX, nullptr, 0)) != cudaSuccess) return e;
    if ((e = reduce_pass<T>(c, b, x, outer, r, inner, P_SUMEXP, a, 0)) != cudaSuccess) return e;
    break;
  case RED_VAR:
    if ((e = reduce_pass<T>(c, a, x, outer, r, inner, P_SUM, nullptr, 0)) != cudaSuccess) return e;
    reduce_mean_kernel<<<adk_blocks(c, n, 256), 256, 0, c->stream>>>(a, n, (double)r);
    if ((e = adk_launched()) != cudaSuccess) return e;
    if ((e = reduce_pass<T>(c, b, x, outer, r, inner, P_SUMSQDEV, a, 0)) != cudaSuccess) return e;
    break;
  default: {
    int pr;
    switch (op) {
    case RED_SUM: pr = P_SUM; break;
    case RED_PROD: pr = P_PROD; break;
    case RED_MAX: pr = P_MAX; break;
    case RED_MIN: pr = P_MIN; break;
    case RED_NORM1: pr = P_SUMABS; break;
    case RED_NORM2: pr = P_SUMSQ; break;
    case RED_NORMINF: pr = P_MAXABS; break;
    case RED_NORMNEGINF: pr = P_MINABS; break;
    case RED_NORM0: pr = P_NNZ; break;
    case RED_NORMP: pr = P_SUMPOW; break;
    default: return cudaErrorInvalidValue;
    }
    if ((e = reduce_pass<T>(c, a, x, outer, r, inner, pr, nullptr, param)) != cudaSuccess) return e;
  }
  }
  reduce_final_kernel<T><<<adk_blocks(c, n, 256), 256, 0, c->stream>>>(y, a, b, n, op, (double)r, param);
  return adk_launched();
}

extern "C" cudaError_t ad_launch_reduce(const adk_ctx *c, void *y, const void *x, int dtype, int64_t outer, int64_t r,
                                        int64_t inner, int op, double param) {
  if (outer == 0 || inner == 0) return cudaSuccess;
  if (dtype == ADK_F32) return reduce_typed<float>(c, (float *)y, (const float *)x, outer, r, inner, op, param);
  if (dtype == ADK_F64) return reduce_typed<double>(c, (double *)y, (const double *)x, outer, r, inner, op, param);
  return cudaErrorInvalidValue;
}

/* ---- all / any: one thread per output ---------------------------------------------- */
__global__ void reduce_bool_kernel(uint8_t *y, const uint8_t *x, int64_t outer, int64_t r, int64_t inner,
                                   bool is_all) {
  ADK_GRID_LOOP(k, outer * inner) {
    const int64_t o = k / inner, j = k % inner;
    uint8_t acc = is_all ? 1 : 0;
    for (int64_t i = 0; i < r; i++) {
      const uint8_t v = x[(o * r + i) * inner + j] != 0;
      acc = is_all ? (acc & v) : (acc | v);
    }
    y[k] = acc;
  }
}

extern "C" cudaError_t ad_launch_reduce_bool(const adk_ctx *c, uint8_t *y, const uint8_t *x, int64_t outer,
                                             int64_t r, int64_t inner, bool is_all) {
  if (outer * inner == 0) return cudaSuccess;
  reduce_bool_kernel<<<adk_blocks(c, outer * inner, 256), 256, 0, c->stream>>>(y, x, outer, r, inner, is_all);
  return adk_launched();
}

/* ---- max / min with the index of the first extremum (a NaN wins) -------------------- */

/* does candidate (v, i) beat the current best (bv, bi)? the CPU's order: the
 * first NaN, else the larger (smaller) value, ties to the earlier index */
template <typename T>
ADK_INLINE bool arg_better(T v, int64_t i, T bv, int64_t bi, bool is_max) {
  if (bi < 0) return i >= 0;
  if (i < 0) return false;
  const bool vn = v != v, bn = bv != bv;
  if (vn || bn) return vn && (!bn || i < bi);
  if (v == bv) return i < bi;
  return is_max ? v > bv : v < bv;
}

/* inner == 1: a warp per output */
template <typename T>
__global__ void arg_rows_kernel(T *values, int64_t *indices, const T *x, int64_t outer, int64_t r, bool is_max) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  for (int64_t o = (((int64_t)blockIdx.x * blockDim.x) + threadIdx.x) >> 5; o < outer; o += warps) {
    const T *row = x + o * r;
    T bv = 0;
    int64_t bi = -1;
    for (int64_t i = lane; i < r; i += 32) {
      const T v = row[i];
      if (arg_better(v, i, bv, bi, is_max)) { bv = v; bi = i; }
    }
    for (int off = 16; off > 0; off >>= 1) {
      const T ov = __shfl_xor_sync(0xffffffffu, bv, off);
      const int64_t oi = __shfl_xor_sync(0xffffffffu, bi, off);
      if (arg_better(ov, oi, bv, bi, is_max)) { bv = ov; bi = oi; }
    }
    if (lane == 0) {
      if (values) values[o] = bv;
      indices[o] = bi;
    }
  }
}

/* inner > 1: a thread per output column, the CPU's scan order */
template <typename T>
__global__ void arg_cols_kernel(T *values, int64_t *indices, const T *x, int64_t outer, int64_t r, int64_t inner,
                                bool is_max) {
  ADK_GRID_LOOP(k, outer * inner) {
    const int64_t o = k / inner, j = k % inner;
    const T *col = x + o * r * inner + j;
    T best = col[0];
    int64_t bi = 0;
    for (int64_t i = 1; i < r; i++) {
      const T v = col[i * inner];
      if (best == best && (v != v || (is_max ? v > best : v < best))) { best = v; bi = i; }
    }
    if (values) values[k] = best;
    indices[k] = bi;
  }
}

extern "C" cudaError_t ad_launch_arg_reduce(const adk_ctx *c, void *values, int64_t *indices, const void *x,
                                            int dtype, int64_t outer, int64_t r, int64_t inner, bool is_max) {
  if (outer * inner == 0 || r < 1) return cudaSuccess;
  if (inner == 1) {
    const int64_t blocks = (outer + 7) / 8;
    const int64_t cap = (int64_t)(c->num_sms > 0 ? c->num_sms : 80) * 16;
    const unsigned g = (unsigned)(blocks < cap ? blocks : cap);
    ADK_DISPATCH_F(dtype, T, (arg_rows_kernel<T><<<g, 256, 0, c->stream>>>((T *)values, indices, (const T *)x, outer,
                                                                          r, is_max)));
  } else {
    ADK_DISPATCH_F(dtype, T, (arg_cols_kernel<T><<<adk_blocks(c, outer * inner, 256), 256, 0, c->stream>>>(
                                (T *)values, indices, (const T *)x, outer, r, inner, is_max)));
  }
  return adk_launched();
}

template <typename U>
__global__ void arg_bwd_kernel(U *dx, const U *dy, const int64_t *idx, int64_t outer, int64_t r, int64_t inner) {
  ADK_GRID_LOOP(k, outer * inner) {
    const int64_t o = k / inner, j = k % inner, i = idx[k];
    if (i >= 0 && i < r) dx[(o * r + i) * inner + j] = dy[k];
  }
}

extern "C" cudaError_t ad_launch_arg_reduce_bwd(const adk_ctx *c, void *dx, const void *dy, const int64_t *indices,
                                                size_t esize, int64_t outer, int64_t r, int64_t inner) {
  const int64_t total = outer * r * inner;
  if (total == 0) return cudaSuccess;
  cudaError_t e = cudaMemsetAsync(dx, 0, (size_t)total * esize, c->stream);
  if (e != cudaSuccess) return e;
  const unsigned g = adk_blocks(c, outer * inner, 256);
  switch (esize) {
  case 8: arg_bwd_kernel<uint64_t><<<g, 256, 0, c->stream>>>((uint64_t *)dx, (const uint64_t *)dy, indices, outer, r, inner); break;
  case 4: arg_bwd_kernel<uint32_t><<<g, 256, 0, c->stream>>>((uint32_t *)dx, (const uint32_t *)dy, indices, outer, r, inner); break;
  case 2: arg_bwd_kernel<uint16_t><<<g, 256, 0, c->stream>>>((uint16_t *)dx, (const uint16_t *)dy, indices, outer, r, inner); break;
  default: arg_bwd_kernel<uint8_t><<<g, 256, 0, c->stream>>>((uint8_t *)dx, (const uint8_t *)dy, indices, outer, r, inner); break;
  }
  return adk_launched();
}

/* ---- cumsum: one thread per column, the CPU's order (double accumulator) ------------- */
template <typename T>
__global__ void cumsum_kernel(T *y, const T *x, int64_t outer, int64_t r, int64_t inner, bool reverse) {
  ADK_GRID_LOOP(k, outer * inner) {
    const int64_t o = k / inner, j = k % inner;
    double acc = 0;
    for (int64_t q = 0; q < r; q++) {
      const int64_t i = reverse ? r - 1 - q : q, at = (o * r + i) * inner + j;
      acc += (double)x[at];
      y[at] = (T)acc;
    }
  }
}

extern "C" cudaError_t ad_launch_cumsum(const adk_ctx *c, void *y, const void *x, int dtype, int64_t outer, int64_t r,
                                        int64_t inner, bool reverse) {
  if (outer * r * inner == 0) return cudaSuccess;
  ADK_DISPATCH_F(dtype, T, (cumsum_kernel<T><<<adk_blocks(c, outer * inner, 128), 128, 0, c->stream>>>(
                              (T *)y, (const T *)x, outer, r, inner, reverse)));
  return adk_launched();
}
