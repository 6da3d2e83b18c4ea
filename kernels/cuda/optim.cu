/* optim.cu: the optimizer family on the GPU, beside core/cpu/cpu_optim.c:
 * the fused multi-tensor Adam/AdamW step, SGD, EMA, the global squared norm
 * and in-place scaling.
 *
 * A launch covers up to ADK_MT_MAX tensors whose pointers and sizes travel in
 * the kernel's parameters (no host-to-device copy, no synchronisation per
 * step); every tensor is cut into chunks of ADK_MT_CHUNK elements and one
 * block takes one chunk, finding its tensor by binary search over the chunk
 * prefix. A model of any size is one launch per dtype and per ADK_MT_MAX
 * tensors. The f32 arithmetic is the CPU's operation for operation, with the
 * roundings pinned by __f*_rn intrinsics (no fused multiply-adds), so an f32
 * Adam step gives the CPU's bits; f64 in double; f16/bf16 parameters are
 * widened to float against f32 state and rounded back. */
#include "common.cuh"

#define MT_THREADS 512

/* tensor of chunk c: the largest t with chunk0[t] <= c */
ADK_INLINE int mt_tensor_of(const adk_mt_batch &b, int64_t c) {
  int lo = 0, hi = b.n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (b.chunk0[mid] <= c) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

#define MT_CHUNK_RANGE(b, t, lo, hi)                                              \
  const int64_t c_ = blockIdx.x;                                                  \
  const int t = mt_tensor_of(b, c_);                                              \
  const int64_t lo = (c_ - b.chunk0[t]) * ADK_MT_CHUNK;                           \
  const int64_t hi = lo + ADK_MT_CHUNK < b.numel[t] ? lo + ADK_MT_CHUNK : b.numel[t]

/* ---- Adam / AdamW ---------------------------------------------------------- */
struct adam_consts {
  double lr, b1, b2, eps, wd, inv_scale, decay_mul, step_size, bc2_sqrt;
  bool decoupled, maximize, unscale;
};

__global__ void adam_f64_kernel(adk_mt_batch b, adam_consts k) {
  MT_CHUNK_RANGE(b, t, lo, hi);
  double *p = (double *)b.a[t], *m = (double *)b.c[t], *v = (double *)b.d[t];
  const double *g = (const double *)b.b[t];
  for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) {
    double gj = __dmul_rn(g[j], k.inv_scale);
    if (k.maximize) gj = -gj;
    double pj = p[j];
    if (k.wd != 0) {
      if (k.decoupled) pj = __dmul_rn(pj, k.decay_mul);
      else gj = __dadd_rn(gj, __dmul_rn(k.wd, pj));
    }
    const double mj = __dadd_rn(m[j], __dmul_rn(1.0 - k.b1, __dsub_rn(gj, m[j])));
    const double vj = __dadd_rn(__dmul_rn(v[j], k.b2), __dmul_rn(__dmul_rn(1.0 - k.b2, gj), gj));
    m[j] = mj;
    v[j] = vj;
    p[j] = __dsub_rn(pj, __dmul_rn(k.step_size, mj) / __dadd_rn(__ddiv_rn(sqrt(vj), k.bc2_sqrt), k.eps));
  }
}

/* P: float, adk_f16 or adk_bf16 parameters (and gradients); f32 state */
template <typename P>
__global__ void adam_f32_kernel(adk_mt_batch b, adam_consts k) {
  MT_CHUNK_RANGE(b, t, lo, hi);
  P *p = (P *)b.a[t];
  const P *g = (const P *)b.b[t];
  float *m = (float *)b.c[t], *v = (float *)b.d[t];
  const float b1c = (float)(1.0 - k.b1), b2 = (float)k.b2, b2c = (float)(1.0 - k.b2);
  const float wd = (float)k.wd, eps = (float)k.eps, inv_scale = (float)k.inv_scale;
  const float decay_mul = (float)k.decay_mul, ss = (float)k.step_size, bc2 = (float)k.bc2_sqrt;
  for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) {
    float gj = adk_ld(g + j);
    if (k.unscale) gj = __fmul_rn(gj, inv_scale);
    if (k.maximize) gj = -gj;
    float pj = adk_ld(p + j);
    if (wd != 0) {
      if (k.decoupled) pj = __fmul_rn(pj, decay_mul);
      else gj = __fadd_rn(gj, __fmul_rn(wd, pj));
    }
    const float mj = __fadd_rn(m[j], __fmul_rn(b1c, __fsub_rn(gj, m[j])));
    const float vj = __fadd_rn(__fmul_rn(v[j], b2), __fmul_rn(__fmul_rn(b2c, gj), gj));
    m[j] = mj;
    v[j] = vj;
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vj), bc2), eps);
    adk_st(p + j, __fsub_rn(pj, __fmul_rn(ss, __fdiv_rn(mj, denom))));
  }
}

extern "C" cudaError_t ad_launch_adam_step(const adk_ctx *c, const adk_mt_batch *b, int dtype,
                                           const adk_adam_args *a) {
  const int64_t chunks = b->chunk0[b->n];
  if (b->n == 0 || chunks == 0) return cudaSuccess;
  if (chunks > INT32_MAX) return cudaErrorInvalidValue;
  adam_consts k;
  k.lr = a->lr;
  k.b1 = a->beta1;
  k.b2 = a->beta2;
  k.eps = a->eps;
  k.wd = a->weight_decay;
  k.inv_scale = 1.0 / a->grad_scale;
  k.decay_mul = 1.0 - a->lr * a->weight_decay;
  k.step_size = a->lr / a->bias_correction1;
  k.bc2_sqrt = sqrt(a->bias_correction2);
  k.decoupled = a->decoupled;
  k.maximize = a->maximize;
  k.unscale = a->grad_scale != 1.0;
  const unsigned g = (unsigned)chunks;
  switch (dtype) {
  case ADK_F64: adam_f64_kernel<<<g, MT_THREADS, 0, c->stream>>>(*b, k); break;
  case ADK_F32: adam_f32_kernel<float><<<g, MT_THREADS, 0, c->stream>>>(*b, k); break;
  case ADK_F16: adam_f32_kernel<adk_f16><<<g, MT_THREADS, 0, c->stream>>>(*b, k); break;
  case ADK_BF16: adam_f32_kernel<adk_bf16><<<g, MT_THREADS, 0, c->stream>>>(*b, k); break;
  default: return cudaErrorInvalidValue;
  }
  return adk_launched();
}

/* ---- SGD --------------------------------------------------------------------- */
__global__ void sgd_f64_kernel(adk_mt_batch b, adk_sgd_args a) {
  MT_CHUNK_RANGE(b, t, lo, hi);
  double *p = (double *)b.a[t], *buf = (double *)b.c[t];
  const double *g = (const double *)b.b[t];
  const double inv_scale = 1.0 / a.grad_scale, damp = 1.0 - a.dampening;
  for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) {
    double gj = __dmul_rn(g[j], inv_scale);
    if (a.maximize) gj = -gj;
    if (a.weight_decay != 0) gj = __dadd_rn(gj, __dmul_rn(a.weight_decay, p[j]));
    if (a.momentum != 0) {
      buf[j] = a.first ? gj : __dadd_rn(__dmul_rn(a.momentum, buf[j]), __dmul_rn(damp, gj));
      gj = a.nesterov ? __dadd_rn(gj, __dmul_rn(a.momentum, buf[j])) : buf[j];
    }
    p[j] = __dsub_rn(p[j], __dmul_rn(a.lr, gj));
  }
}

template <typename P>
__global__ void sgd_f32_kernel(adk_mt_batch b, adk_sgd_args a) {
  MT_CHUNK_RANGE(b, t, lo, hi);
  P *p = (P *)b.a[t];
  const P *g = (const P *)b.b[t];
  float *buf = (float *)b.c[t];
  const float inv_scale = (float)(1.0 / a.grad_scale), wd = (float)a.weight_decay, mom = (float)a.momentum;
  const float damp = (float)(1.0 - a.dampening), lr = (float)a.lr;
  for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) {
    float gj = __fmul_rn(adk_ld(g + j), inv_scale);
    if (a.maximize) gj = -gj;
    const float pj = adk_ld(p + j);
    if (a.weight_decay != 0) gj = __fadd_rn(gj, __fmul_rn(wd, pj));
    if (a.momentum != 0) {
      buf[j] = a.first ? gj : __fadd_rn(__fmul_rn(mom, buf[j]), __fmul_rn(damp, gj));
      gj = a.nesterov ? __fadd_rn(gj, __fmul_rn(mom, buf[j])) : buf[j];
    }
    adk_st(p + j, __fsub_rn(pj, __fmul_rn(lr, gj)));
  }
}

extern "C" cudaError_t ad_launch_sgd_step(const adk_ctx *c, const adk_mt_batch *b, int dtype, const adk_sgd_args *a) {
  const int64_t chunks = b->chunk0[b->n];
  if (b->n == 0 || chunks == 0) return cudaSuccess;
  if (chunks > INT32_MAX) return cudaErrorInvalidValue;
  const unsigned g = (unsigned)chunks;
  switch (dtype) {
  case ADK_F64: sgd_f64_kernel<<<g, MT_THREADS, 0, c->stream>>>(*b, *a); break;
  case ADK_F32: sgd_f32_kernel<float><<<g, MT_THREADS, 0, c->stream>>>(*b, *a); break;
  case ADK_F16: sgd_f32_kernel<adk_f16><<<g, MT_THREADS, 0, c->stream>>>(*b, *a); break;
  case ADK_BF16: sgd_f32_kernel<adk_bf16><<<g, MT_THREADS, 0, c->stream>>>(*b, *a); break;
  default: return cudaErrorInvalidValue;
  }
  return adk_launched();
}

/* ---- EMA: ema += (1 - decay) (src - ema), per-tensor dtypes ------------------------ */
__global__ void ema_kernel(adk_mt_batch b, double w) {
  MT_CHUNK_RANGE(b, t, lo, hi);
  const int de = b.dtype_a[t], ds = b.dtype_b[t];
  if (de == ADK_F32 && ds == ADK_F32) {
    float *e = (float *)b.a[t];
    const float *s = (const float *)b.b[t];
    const float wf = (float)w;
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) e[j] = __fadd_rn(e[j], __fmul_rn(wf, __fsub_rn(s[j], e[j])));
  } else if (de == ADK_F64 && ds == ADK_F64) {
    double *e = (double *)b.a[t];
    const double *s = (const double *)b.b[t];
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) e[j] = __dadd_rn(e[j], __dmul_rn(w, __dsub_rn(s[j], e[j])));
  } else {
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) {
      const double ej = adk_load_any(de, b.a[t], j), sj = adk_load_any(ds, b.b[t], j);
      adk_store_any(de, b.a[t], j, __dadd_rn(ej, __dmul_rn(w, __dsub_rn(sj, ej))));
    }
  }
}

extern "C" cudaError_t ad_launch_ema_update(const adk_ctx *c, const adk_mt_batch *b, double decay) {
  const int64_t chunks = b->chunk0[b->n];
  if (b->n == 0 || chunks == 0) return cudaSuccess;
  if (chunks > INT32_MAX) return cudaErrorInvalidValue;
  ema_kernel<<<(unsigned)chunks, MT_THREADS, 0, c->stream>>>(*b, 1.0 - decay);
  return adk_launched();
}

/* ---- squared norm: one double per chunk, then a fixed-order total -------------------- */
ADK_INLINE double sq_elem(int dt, const void *p, int64_t j) {
  switch (dt) {
  case ADK_F32: { const double v = ((const float *)p)[j]; return v * v; }
  case ADK_F64: { const double v = ((const double *)p)[j]; return v * v; }
  case ADK_F16: { const double v = ad_f16_to_f32(((const uint16_t *)p)[j]); return v * v; }
  default: { const double v = ad_bf16_to_f32(((const uint16_t *)p)[j]); return v * v; }
  }
}

__global__ void sq_norm_chunks_kernel(double *part, adk_mt_batch b) {
  MT_CHUNK_RANGE(b, t, lo, hi);
  double s = 0;
  for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) s += sq_elem(b.dtype_a[t], b.a[t], j);
  s = adk_block_sum(s);
  if (threadIdx.x == 0) part[c_] = s;
}

__global__ void sum_in_order_kernel(double *out, const double *part, int64_t n) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += part[i];
  s = adk_block_sum(s);
  if (threadIdx.x == 0) *out = s;
}

extern "C" cudaError_t ad_launch_sq_norm_chunks(const adk_ctx *c, double *part, const adk_mt_batch *b) {
  const int64_t chunks = b->chunk0[b->n];
  if (b->n == 0 || chunks == 0) return cudaSuccess;
  if (chunks > INT32_MAX) return cudaErrorInvalidValue;
  sq_norm_chunks_kernel<<<(unsigned)chunks, MT_THREADS, 0, c->stream>>>(part, *b);
  return adk_launched();
}

extern "C" cudaError_t ad_launch_sum_doubles(const adk_ctx *c, double *out, const double *part, int64_t n) {
  if (n == 0) return cudaMemsetAsync(out, 0, sizeof(double), c->stream);
  sum_in_order_kernel<<<1, 1024, 0, c->stream>>>(out, part, n);
  return adk_launched();
}

/* ---- scale in place ----------------------------------------------------------------- */
__global__ void scale_kernel(adk_mt_batch b, double s) {
  MT_CHUNK_RANGE(b, t, lo, hi);
  const int dt = b.dtype_a[t];
  void *x = b.a[t];
  for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) {
    switch (dt) {
    case ADK_F64: ((double *)x)[j] *= s; break;
    case ADK_F32: ((float *)x)[j] = __fmul_rn(((float *)x)[j], (float)s); break;
    case ADK_F16: { adk_f16 *h = (adk_f16 *)x + j; adk_st(h, __fmul_rn(adk_ld(h), (float)s)); break; }
    case ADK_BF16: { adk_bf16 *h = (adk_bf16 *)x + j; adk_st(h, __fmul_rn(adk_ld(h), (float)s)); break; }
    default: break;
    }
  }
}

extern "C" cudaError_t ad_launch_scale(const adk_ctx *c, const adk_mt_batch *b, double s) {
  const int64_t chunks = b->chunk0[b->n];
  if (b->n == 0 || chunks == 0) return cudaSuccess;
  if (chunks > INT32_MAX) return cudaErrorInvalidValue;
  scale_kernel<<<(unsigned)chunks, MT_THREADS, 0, c->stream>>>(*b, s);
  return adk_launched();
}
