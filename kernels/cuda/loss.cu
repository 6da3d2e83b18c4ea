/* loss.cu: the loss kernels on the GPU, beside core/cpu/cpu_loss.c: the
 * pointwise losses (mse, l1, BCE with logits) and the class losses
 * (cross_entropy, nll_loss), forward and backward, f32/f64 data with double
 * arithmetic, the CPU's formulas (see cpu_loss.c for their derivation).
 * Reductions to a scalar are deterministic: per-block partial sums in a fixed
 * order, then one block adds the partials in block order. */
#include "common.cuh"

enum { LOSS_MSE = 0, LOSS_L1, LOSS_BCE };    /* ad_pointwise_loss */
enum { RED_NONE = 0, RED_MEAN, RED_SUM };    /* ad_reduction */

#define LOSS_THREADS 256
#define LOSS_MAX_BLOCKS 1024

ADK_INLINE double softplus_neg(double x) { return (x < 0 ? -x : 0.0) + log1p(exp(-fabs(x))); }

ADK_INLINE double pw_loss(int kind, double x, double t, double w, double pw) {
  switch (kind) {
  case LOSS_MSE: return (x - t) * (x - t);
  case LOSS_L1: return fabs(x - t);
  default: return w * ((1.0 - t) * x + (1.0 + (pw - 1.0) * t) * softplus_neg(x));
  }
}

/* one block adds the partials in order and stores the (scaled) total */
template <typename T>
__global__ void finish_sum_kernel(T *out, const double *part, int nparts, double scale) {
  double s = 0;
  for (int i = threadIdx.x; i < nparts; i += blockDim.x) s += part[i];
  s = adk_block_sum(s);
  if (threadIdx.x == 0) out[0] = (T)(s * scale);
}

template <typename T>
__global__ void pointwise_loss_fwd_kernel(T *out, double *part, const T *x, const T *t, const T *w, const T *pw,
                                          int64_t n, int kind, bool reduce) {
  double acc = 0;
  ADK_GRID_LOOP(i, n) {
    const double l = pw_loss(kind, (double)x[i], (double)t[i], w ? (double)w[i] : 1.0, pw ? (double)pw[i] : 1.0);
    if (reduce) acc += l;
    else out[i] = (T)l;
  }
  if (reduce) {
    acc = adk_block_sum(acc);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
  }
}

static unsigned loss_blocks(const adk_ctx *c, int64_t n) {
  unsigned b = adk_blocks(c, n, LOSS_THREADS);
  return b > LOSS_MAX_BLOCKS ? LOSS_MAX_BLOCKS : b;
}

extern "C" cudaError_t ad_launch_pointwise_loss_fwd(const adk_ctx *c, void *out, const void *input,
                                                    const void *target, const void *weight, const void *pos_weight,
                                                    int dtype, int64_t n, int kind, int r) {
  const bool reduce = r != RED_NONE;
  if (!reduce && n == 0) return cudaSuccess;
  unsigned blocks = loss_blocks(c, n);
  adk_scratch part(c, reduce ? blocks * sizeof(double) : 0);
  if (reduce && !part.p) return cudaErrorMemoryAllocation;
  cudaError_t e;
  ADK_DISPATCH_F(dtype, T, (pointwise_loss_fwd_kernel<T><<<blocks, LOSS_THREADS, 0, c->stream>>>(
                              (T *)out, part.as<double>(), (const T *)input, (const T *)target, (const T *)weight,
                              (const T *)pos_weight, n, kind, reduce)));
  if ((e = adk_launched()) != cudaSuccess || !reduce) return e;
  const double scale = r == RED_MEAN ? 1.0 / (double)n : 1.0;
  ADK_DISPATCH_F(dtype, T, (finish_sum_kernel<T><<<1, LOSS_THREADS, 0, c->stream>>>((T *)out, part.as<double>(),
                                                                                     (int)blocks, scale)));
  return adk_launched();
}

template <typename T>
__global__ void pointwise_loss_bwd_kernel(T *di, T *dt, T *dw, T *dp, const T *dy, const T *x, const T *t,
                                          const T *w, const T *pw, int64_t n, int kind, int r) {
  const double g0 = r == RED_NONE ? 0.0 : (double)dy[0] / (r == RED_MEAN ? (double)n : 1.0);
  ADK_GRID_LOOP(i, n) {
    const double g = r == RED_NONE ? (double)dy[i] : g0;
    const double xv = (double)x[i], tv = (double)t[i];
    double dI, dT;
    if (kind == LOSS_MSE) {
      dI = 2.0 * (xv - tv) * g;
      dT = -dI;
    } else if (kind == LOSS_L1) {
      dI = (xv > tv ? 1.0 : xv < tv ? -1.0 : 0.0) * g;
      dT = -dI;
    } else {
      const double wv = w ? (double)w[i] : 1.0, p = pw ? (double)pw[i] : 1.0;
      const double lw = 1.0 + (p - 1.0) * tv, sp = softplus_neg(xv);
      dI = g * wv * ((1.0 - tv) - lw * ad_sigmoid(-xv));
      dT = g * wv * (-xv + (p - 1.0) * sp);
      if (dw) dw[i] = (T)(g * ((1.0 - tv) * xv + lw * sp));
      if (dp) dp[i] = (T)(g * wv * tv * sp);
    }
    if (di) di[i] = (T)dI;
    if (dt) dt[i] = (T)dT;
  }
}

extern "C" cudaError_t ad_launch_pointwise_loss_bwd(const adk_ctx *c, void *dinput, void *dtarget, void *dweight,
                                                    void *dpos_weight, const void *dy, const void *input,
                                                    const void *target, const void *weight, const void *pos_weight,
                                                    int dtype, int64_t n, int kind, int r) {
  if (n == 0) return cudaSuccess;
  ADK_DISPATCH_F(dtype, T, (pointwise_loss_bwd_kernel<T><<<adk_blocks(c, n, LOSS_THREADS), LOSS_THREADS, 0,
                                                           c->stream>>>(
                              (T *)dinput, (T *)dtarget, (T *)dweight, (T *)dpos_weight, (const T *)dy,
                              (const T *)input, (const T *)target, (const T *)weight, (const T *)pos_weight, n, kind,
                              r)));
  return adk_launched();
}

/* ======================================================================= class losses */

ADK_INLINE int64_t ldidx(const void *p, int64_t i, bool i64) {
  return i64 ? ((const int64_t *)p)[i] : (int64_t)((const int32_t *)p)[i];
}

/* first bad position (atomicMin) and per-block partial denominators */
__global__ void check_targets_kernel(const void *target, bool i64, int64_t n, const void *w, bool wf64, int64_t C,
                                     int64_t ignore_index, unsigned long long *first_bad, double *part) {
  double d = 0;
  ADK_GRID_LOOP(i, n) {
    const int64_t t = ldidx(target, i, i64);
    if (t == ignore_index) continue;
    if (t < 0 || t >= C) { atomicMin(first_bad, (unsigned long long)i); continue; }
    d += w ? adk_ldf(w, t, wf64) : 1.0;
  }
  d = adk_block_sum(d);
  if (threadIdx.x == 0) part[blockIdx.x] = d;
}

extern "C" cudaError_t ad_launch_check_targets(const adk_ctx *c, const void *target, bool i64, int64_t n,
                                               const void *weight, int wdtype, int64_t C, int64_t ignore_index,
                                               int *bad_found, int64_t *bad_value, double *denom) {
  *bad_found = 0;
  *denom = 0;
  if (n == 0) return cudaSuccess;
  unsigned blocks = loss_blocks(c, n);
  adk_scratch s(c, sizeof(unsigned long long) + (blocks + 1) * sizeof(double));
  if (!s.p) return cudaErrorMemoryAllocation;
  unsigned long long *first = s.as<unsigned long long>();
  double *part = (double *)(first + 1), *total = part + blocks;
  cudaError_t e = cudaMemsetAsync(first, 0xff, sizeof *first, c->stream);
  if (e != cudaSuccess) return e;
  check_targets_kernel<<<blocks, LOSS_THREADS, 0, c->stream>>>(target, i64, n, weight, wdtype == ADK_F64, C,
                                                               ignore_index, first, part);
  if ((e = adk_launched()) != cudaSuccess) return e;
  finish_sum_kernel<double><<<1, LOSS_THREADS, 0, c->stream>>>(total, part, (int)blocks, 1.0);
  if ((e = adk_launched()) != cudaSuccess) return e;
  unsigned long long pos = 0;
  if ((e = cudaMemcpyAsync(&pos, first, sizeof pos, cudaMemcpyDeviceToHost, c->stream)) != cudaSuccess) return e;
  if ((e = cudaMemcpyAsync(denom, total, sizeof *denom, cudaMemcpyDeviceToHost, c->stream)) != cudaSuccess) return e;
  if ((e = cudaStreamSynchronize(c->stream)) != cudaSuccess) return e;
  if (pos != ~0ull) {
    *bad_found = 1;
    if (i64) e = cudaMemcpyAsync(bad_value, (const int64_t *)target + pos, sizeof(int64_t), cudaMemcpyDeviceToHost,
                                 c->stream);
    else {
      int32_t v = 0;
      e = cudaMemcpyAsync(&v, (const int32_t *)target + pos, sizeof v, cudaMemcpyDeviceToHost, c->stream);
      if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
      *bad_value = v;
      return e;
    }
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
  }
  return e;
}

/* One warp per (n, s) row of C classes (class c at base + c*S): log-sum-exp,
 * then the smoothed, weighted loss. Row losses go to rowloss for reduction. */
template <typename T>
__global__ void cross_entropy_fwd_kernel(T *out, T *lse, double *rowloss, const T *x, const void *target, bool i64,
                                         const T *w, int64_t N, int64_t C, int64_t S, int64_t ignore_index,
                                         double eps, bool reduce) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  for (int64_t ns = (((int64_t)blockIdx.x * blockDim.x) + threadIdx.x) >> 5; ns < N * S; ns += warps) {
    const int64_t n = ns / S, s = ns % S, base = n * C * S + s;
    double mx = -INFINITY;
    for (int64_t cl = lane; cl < C; cl += 32) { double v = (double)x[base + cl * S]; mx = (v != v || v > mx) ? v : mx; }
    mx = adk_warp_max(mx);
    double se = 0;
    for (int64_t cl = lane; cl < C; cl += 32) se += exp((double)x[base + cl * S] - mx);
    se = adk_warp_sum(se);
    const double l = mx + log(se);
    const int64_t t = ldidx(target, ns, i64);
    double loss = 0;
    if (t != ignore_index) {
      double sm = 0;
      if (eps > 0) {
        for (int64_t cl = lane; cl < C; cl += 32) sm += (w ? (double)w[cl] : 1.0) * ((double)x[base + cl * S] - l);
        sm = adk_warp_sum(sm);
      }
      const double wt = w ? (double)w[t] : 1.0;
      loss = (1.0 - eps) * -wt * ((double)x[base + t * S] - l);
      if (eps > 0) loss += eps / (double)C * -sm;
    }
    if (lane == 0) {
      lse[ns] = (T)l;
      if (reduce) rowloss[ns] = loss;
      else out[ns] = (T)loss;
    }
  }
}

/* deterministic sum of n doubles into per-block partials */
__global__ void sum_partials_kernel(double *part, const double *v, int64_t n) {
  double s = 0;
  ADK_GRID_LOOP(i, n) s += v[i];
  s = adk_block_sum(s);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

/* out[0] = scale * sum(rows[0..n)) */
template <typename T>
static cudaError_t reduce_rows_to(const adk_ctx *c, T *out, const double *rows, int64_t n, double scale) {
  unsigned blocks = loss_blocks(c, n);
  adk_scratch part(c, blocks * sizeof(double));
  if (!part.p) return cudaErrorMemoryAllocation;
  sum_partials_kernel<<<blocks, LOSS_THREADS, 0, c->stream>>>(part.as<double>(), rows, n);
  cudaError_t e = adk_launched();
  if (e != cudaSuccess) return e;
  finish_sum_kernel<T><<<1, LOSS_THREADS, 0, c->stream>>>(out, part.as<double>(), (int)blocks, scale);
  return adk_launched();
}

static unsigned warp_blocks(const adk_ctx *c, int64_t rows) {
  int64_t b = (rows + 7) / 8;                      /* 8 warps of 256 threads */
  int64_t cap = (int64_t)(c->num_sms > 0 ? c->num_sms : 80) * 16;
  return (unsigned)(b < 1 ? 1 : b > cap ? cap : b);
}

extern "C" cudaError_t ad_launch_cross_entropy_fwd(const adk_ctx *c, void *out, void *lse, const void *logits,
                                                   const void *target, bool i64, const void *weight, int dtype,
                                                   int64_t N, int64_t C, int64_t S, int64_t ignore_index,
                                                   double eps, int r, double denom) {
  const int64_t rows = N * S;
  const bool reduce = r != RED_NONE;
  adk_scratch rl(c, reduce ? (size_t)(rows > 0 ? rows : 1) * sizeof(double) : 0);
  if (reduce && !rl.p) return cudaErrorMemoryAllocation;
  cudaError_t e;
  if (rows > 0) {
    ADK_DISPATCH_F(dtype, T, (cross_entropy_fwd_kernel<T><<<warp_blocks(c, rows), 256, 0, c->stream>>>(
                                (T *)out, (T *)lse, rl.as<double>(), (const T *)logits, target, i64,
                                (const T *)weight, N, C, S, ignore_index, eps, reduce)));
    if ((e = adk_launched()) != cudaSuccess) return e;
  }
  if (!reduce) return cudaSuccess;
  const double scale = r == RED_MEAN ? 1.0 / denom : 1.0;
  if (rows == 0) {
    double z = 0;
    adk_scratch zz(c, sizeof(double));
    if (!zz.p) return cudaErrorMemoryAllocation;
    if ((e = cudaMemcpyAsync(zz.p, &z, sizeof z, cudaMemcpyHostToDevice, c->stream)) != cudaSuccess) return e;
    ADK_DISPATCH_F(dtype, T, (e = reduce_rows_to<T>(c, (T *)out, zz.as<double>(), 1, scale)));
    return e;
  }
  ADK_DISPATCH_F(dtype, T, (e = reduce_rows_to<T>(c, (T *)out, rl.as<double>(), rows, scale)));
  return e;
}

/* dlogit_c = g [ (1-eps) w_t (p_c - [c == t]) + eps/C (W p_c - w_c) ],  W = sum_c w_c */
template <typename T>
__global__ void cross_entropy_bwd_kernel(T *dx, const T *dy, const T *x, const T *lse, const void *target, bool i64,
                                         const T *w, double W, int64_t N, int64_t C, int64_t S,
                                         int64_t ignore_index, double eps, int r, double denom) {
  const double g0 = r == RED_NONE ? 0.0 : (double)dy[0] / (r == RED_MEAN ? denom : 1.0);
  ADK_GRID_LOOP(k, N * C * S) {
    const int64_t s = k % S, cl = (k / S) % C, n = k / (S * C), ns = n * S + s;
    const int64_t t = ldidx(target, ns, i64);
    if (t == ignore_index) { dx[k] = (T)0; continue; }
    const double g = r == RED_NONE ? (double)dy[ns] : g0;
    const double wt = w ? (double)w[t] : 1.0;
    const double p = exp((double)x[k] - (double)lse[ns]);
    double v = (1.0 - eps) * wt * (p - (cl == t ? 1.0 : 0.0));
    if (eps > 0) v += eps / (double)C * (W * p - (w ? (double)w[cl] : 1.0));
    dx[k] = (T)(g * v);
  }
}

template <typename T>
__global__ void weight_total_kernel(double *W, const T *w, int64_t C) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x) s += w ? (double)w[i] : 1.0;
  s = adk_block_sum(s);
  if (threadIdx.x == 0) *W = s;
}

extern "C" cudaError_t ad_launch_cross_entropy_bwd(const adk_ctx *c, void *dlogits, const void *dy,
                                                   const void *logits, const void *lse, const void *target, bool i64,
                                                   const void *weight, int dtype, int64_t N, int64_t C, int64_t S,
                                                   int64_t ignore_index, double eps, int r, double denom) {
  const int64_t total = N * C * S;
  if (total == 0) return cudaSuccess;
  double W = (double)C;
  cudaError_t e;
  if (weight && eps > 0) {  /* the class-weight total: one small reduction, read back */
    adk_scratch ws(c, sizeof(double));
    if (!ws.p) return cudaErrorMemoryAllocation;
    ADK_DISPATCH_F(dtype, T, (weight_total_kernel<T><<<1, 256, 0, c->stream>>>(ws.as<double>(), (const T *)weight, C)));
    if ((e = adk_launched()) != cudaSuccess) return e;
    if ((e = cudaMemcpyAsync(&W, ws.p, sizeof W, cudaMemcpyDeviceToHost, c->stream)) != cudaSuccess) return e;
    if ((e = cudaStreamSynchronize(c->stream)) != cudaSuccess) return e;
  }
  ADK_DISPATCH_F(dtype, T, (cross_entropy_bwd_kernel<T><<<adk_blocks(c, total, 256), 256, 0, c->stream>>>(
                              (T *)dlogits, (const T *)dy, (const T *)logits, (const T *)lse, target, i64,
                              (const T *)weight, W, N, C, S, ignore_index, eps, r, denom)));
  return adk_launched();
}

template <typename T>
__global__ void nll_fwd_kernel(T *out, double *rowloss, const T *logp, const void *target, bool i64, const T *w,
                               int64_t N, int64_t C, int64_t S, int64_t ignore_index, bool reduce) {
  ADK_GRID_LOOP(ns, N * S) {
    const int64_t n = ns / S, s = ns % S, t = ldidx(target, ns, i64);
    double loss = 0;
    if (t != ignore_index) loss = -(w ? (double)w[t] : 1.0) * (double)logp[n * C * S + t * S + s];
    if (reduce) rowloss[ns] = loss;
    else out[ns] = (T)loss;
  }
}

extern "C" cudaError_t ad_launch_nll_loss_fwd(const adk_ctx *c, void *out, const void *logp, const void *target,
                                              bool i64, const void *weight, int dtype, int64_t N, int64_t C,
                                              int64_t S, int64_t ignore_index, int r, double denom) {
  const int64_t rows = N * S;
  const bool reduce = r != RED_NONE;
  adk_scratch rl(c, (size_t)(rows > 0 ? rows : 1) * sizeof(double));
  if (!rl.p) return cudaErrorMemoryAllocation;
  cudaError_t e;
  if (rows > 0) {
    ADK_DISPATCH_F(dtype, T, (nll_fwd_kernel<T><<<adk_blocks(c, rows, 256), 256, 0, c->stream>>>(
                                (T *)out, rl.as<double>(), (const T *)logp, target, i64, (const T *)weight, N, C, S,
                                ignore_index, reduce)));
    if ((e = adk_launched()) != cudaSuccess) return e;
  } else if (reduce) {
    if ((e = cudaMemsetAsync(rl.p, 0, sizeof(double), c->stream)) != cudaSuccess) return e;
  }
  if (!reduce) return cudaSuccess;
  const double scale = r == RED_MEAN ? 1.0 / denom : 1.0;
  ADK_DISPATCH_F(dtype, T, (e = reduce_rows_to<T>(c, (T *)out, rl.as<double>(), rows > 0 ? rows : 1, scale)));
  return e;
}

/* dlogp: zeros except -w_t g at each target class */
template <typename T>
__global__ void nll_bwd_kernel(T *dx, const T *dy, const void *target, bool i64, const T *w, int64_t N, int64_t C,
                               int64_t S, int64_t ignore_index, int r, double denom) {
  const double g0 = r == RED_NONE ? 0.0 : (double)dy[0] / (r == RED_MEAN ? denom : 1.0);
  ADK_GRID_LOOP(ns, N * S) {
    const int64_t n = ns / S, s = ns % S, t = ldidx(target, ns, i64);
    if (t == ignore_index) continue;
    const double g = r == RED_NONE ? (double)dy[ns] : g0;
    dx[n * C * S + t * S + s] = (T)(-(w ? (double)w[t] : 1.0) * g);
  }
}

extern "C" cudaError_t ad_launch_nll_loss_bwd(const adk_ctx *c, void *dlogp, const void *dy, const void *target,
                                              bool i64, const void *weight, int dtype, int64_t N, int64_t C,
                                              int64_t S, int64_t ignore_index, int r, double denom) {
  const int64_t total = N * C * S;
  if (total == 0) return cudaSuccess;
  cudaError_t e = cudaMemsetAsync(dlogp, 0, (size_t)total * (dtype == ADK_F64 ? 8 : 4), c->stream);
  if (e != cudaSuccess) return e;
  ADK_DISPATCH_F(dtype, T, (nll_bwd_kernel<T><<<adk_blocks(c, N * S, 256), 256, 0, c->stream>>>(
                              (T *)dlogp, (const T *)dy, target, i64, (const T *)weight, N, C, S, ignore_index, r,
                              denom)));
  return adk_launched();
}
