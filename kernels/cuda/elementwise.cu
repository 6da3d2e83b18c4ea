/* elementwise.cu: the elementwise family on the GPU, beside
 * core/cpu/cpu_elementwise.c: ONE generic path for every op.
 *
 * Each launcher describes its operands as an adk_iter (same shape, any
 * strides, stride 0 for broadcast) and a small functor holding the op code;
 * the op's formula is chosen by a switch inside the functor (warp-uniform, so
 * it costs a few instructions per element of a memory-bound loop). The walk
 * is coalesced first (adk_iter_coalesce). Then:
 *  - a flat run (one dim, every operand stride 1 or 0) goes to ew_flat_kernel,
 *    which moves V elements per thread with 16-byte vector loads and stores
 *    when every stride-1 pointer is aligned (4 f32, 2 f64, 8 f16/bf16), a
 *    stride-0 operand being read once per thread;
 *  - anything else goes to ew_strided_kernel, which computes each operand's
 *    offset by div/mod over the coalesced dims (32-bit division when the walk
 *    has fewer than 2^31 elements).
 * f32, f16 and bf16 compute in f32, f64 in f64 (the CPU's f32/f64 loops do the
 * same; its f16/bf16 path computes in double, so those can differ in the last
 * bit of a 16-bit result). Integer and bool tensors take ew_any_kernel, which
 * computes in double with the CPU's conversions, as the CPU's generic path
 * does. The scalar formulas shared with the CPU come from mathinl.h. */
#include "common.cuh"

/* op codes: ad_unop / ad_binop in core/ops.h */
enum {
  UN_NEG, UN_EXP, UN_LOG, UN_LOG1P, UN_EXPM1, UN_SQRT, UN_RSQRT, UN_ABS, UN_SIGN, UN_SIN, UN_COS, UN_TANH,
  UN_SIGMOID, UN_RELU, UN_SILU, UN_GELU, UN_SOFTPLUS, UN_SQUARE, UN_RECIPROCAL, UN_FLOOR, UN_CEIL, UN_ROUND,
  UN_ISFINITE, UN_ISNAN, UN_LOGICAL_NOT
};
enum {
  BIN_ADD, BIN_SUB, BIN_MUL, BIN_DIV, BIN_POW, BIN_MAXIMUM, BIN_MINIMUM, BIN_EQ, BIN_NE, BIN_LT, BIN_LE, BIN_GT,
  BIN_GE, BIN_LOGICAL_AND, BIN_LOGICAL_OR, BIN_LOGICAL_XOR
};

static bool un_is_bool(int op) { return op == UN_ISFINITE || op == UN_ISNAN || op == UN_LOGICAL_NOT; }
static bool bin_is_bool(int op) { return op >= BIN_EQ && op <= BIN_LOGICAL_XOR; }

/* ---- math in the compute type (float or double) --------------------------- */
ADK_INLINE float m_exp(float x) { return expf(x); }
ADK_INLINE double m_exp(double x) { return exp(x); }
ADK_INLINE float m_log(float x) { return logf(x); }
ADK_INLINE double m_log(double x) { return log(x); }
ADK_INLINE float m_log1p(float x) { return log1pf(x); }
ADK_INLINE double m_log1p(double x) { return log1p(x); }
ADK_INLINE float m_expm1(float x) { return expm1f(x); }
ADK_INLINE double m_expm1(double x) { return expm1(x); }
ADK_INLINE float m_sqrt(float x) { return sqrtf(x); }
ADK_INLINE double m_sqrt(double x) { return sqrt(x); }
ADK_INLINE float m_sin(float x) { return sinf(x); }
ADK_INLINE double m_sin(double x) { return sin(x); }
ADK_INLINE float m_cos(float x) { return cosf(x); }
ADK_INLINE double m_cos(double x) { return cos(x); }
ADK_INLINE float m_tanh(float x) { return tanhf(x); }
ADK_INLINE double m_tanh(double x) { return tanh(x); }
ADK_INLINE float m_pow(float x, float z) { return powf(x, z); }
ADK_INLINE double m_pow(double x, double z) { return pow(x, z); }
ADK_INLINE float m_abs(float x) { return fabsf(x); }
ADK_INLINE double m_abs(double x) { return fabs(x); }
ADK_INLINE float m_floor(float x) { return floorf(x); }
ADK_INLINE double m_floor(double x) { return floor(x); }
ADK_INLINE float m_ceil(float x) { return ceilf(x); }
ADK_INLINE double m_ceil(double x) { return ceil(x); }
ADK_INLINE float m_rint(float x) { return rintf(x); }
ADK_INLINE double m_rint(double x) { return rint(x); }
ADK_INLINE float m_sigmoid(float x) { return ad_sigmoidf(x); }
ADK_INLINE double m_sigmoid(double x) { return ad_sigmoid(x); }
ADK_INLINE float m_silu(float x) { return ad_siluf(x); }
ADK_INLINE double m_silu(double x) { return ad_silu(x); }
ADK_INLINE float m_silu_grad(float x) { return ad_silu_gradf(x); }
ADK_INLINE double m_silu_grad(double x) { return ad_silu_grad(x); }
ADK_INLINE float m_gelu(float x) { return ad_geluf(x); }
ADK_INLINE double m_gelu(double x) { return ad_gelu(x); }
ADK_INLINE float m_gelu_grad(float x) { return ad_gelu_gradf(x); }
ADK_INLINE double m_gelu_grad(double x) { return ad_gelu_grad(x); }
ADK_INLINE float m_softplus(float x) { return ad_softplusf(x); }
ADK_INLINE double m_softplus(double x) { return ad_softplus(x); }

template <typename C>
ADK_INLINE C un_op(int op, C x) {
  switch (op) {
  case UN_NEG: return -x;
  case UN_EXP: return m_exp(x);
  case UN_LOG: return m_log(x);
  case UN_LOG1P: return m_log1p(x);
  case UN_EXPM1: return m_expm1(x);
  case UN_SQRT: return m_sqrt(x);
  case UN_RSQRT: return (C)1 / m_sqrt(x);
  case UN_ABS: return m_abs(x);
  case UN_SIGN: return x > 0 ? (C)1 : x < 0 ? (C)-1 : x;
  case UN_SIN: return m_sin(x);
  case UN_COS: return m_cos(x);
  case UN_TANH: return m_tanh(x);
  case UN_SIGMOID: return m_sigmoid(x);
  case UN_RELU: return x < 0 ? (C)0 : x;
  case UN_SILU: return m_silu(x);
  case UN_GELU: return m_gelu(x);
  case UN_SOFTPLUS: return m_softplus(x);
  case UN_SQUARE: return x * x;
  case UN_RECIPROCAL: return (C)1 / x;
  case UN_FLOOR: return m_floor(x);
  case UN_CEIL: return m_ceil(x);
  case UN_ROUND: return m_rint(x);
  case UN_ISFINITE: return isfinite(x) ? (C)1 : (C)0;
  case UN_ISNAN: return x != x ? (C)1 : (C)0;
  case UN_LOGICAL_NOT: return x == 0 ? (C)1 : (C)0;
  default: return 0;
  }
}

/* v is y = op(x) for the ops of ad_unop_bwd_uses_y, else x */
template <typename C>
ADK_INLINE C un_bwd(int op, C v, C g) {
  switch (op) {
  case UN_NEG: return -g;
  case UN_EXP: return g * v;
  case UN_LOG: return g / v;
  case UN_LOG1P: return g / (1 + v);
  case UN_EXPM1: return g * (v + 1);
  case UN_SQRT: return g / (2 * v);
  case UN_RSQRT: return (C)-0.5 * g * v * v * v;
  case UN_ABS: return v > 0 ? g : v < 0 ? -g : (C)0;
  case UN_SIN: return g * m_cos(v);
  case UN_COS: return -g * m_sin(v);
  case UN_TANH: return g * (1 - v * v);
  case UN_SIGMOID: return g * v * (1 - v);
  case UN_RELU: return v > 0 ? g : (C)0;
  case UN_SILU: return g * m_silu_grad(v);
  case UN_GELU: return g * m_gelu_grad(v);
  case UN_SOFTPLUS: return v > 20 ? g : g * m_sigmoid(v);
  case UN_SQUARE: return 2 * v * g;
  case UN_RECIPROCAL: return -g * v * v;
  default: return 0;
  }
}

template <typename C>
ADK_INLINE C bin_op(int op, C x, C z) {
  switch (op) {
  case BIN_ADD: return x + z;
  case BIN_SUB: return x - z;
  case BIN_MUL: return x * z;
  case BIN_DIV: return x / z;
  case BIN_POW: return m_pow(x, z);
  case BIN_MAXIMUM: return (x != x || x > z) ? x : z;
  case BIN_MINIMUM: return (x != x || x < z) ? x : z;
  case BIN_EQ: return x == z;
  case BIN_NE: return x != z;
  case BIN_LT: return x < z;
  case BIN_LE: return x <= z;
  case BIN_GT: return x > z;
  case BIN_GE: return x >= z;
  case BIN_LOGICAL_AND: return (x != 0) && (z != 0);
  case BIN_LOGICAL_OR: return (x != 0) || (z != 0);
  case BIN_LOGICAL_XOR: return (x != 0) != (z != 0);
  default: return 0;
  }
}

/* gradients of a op b (x = a, z = b, g = dy): the CPU's BINB_DA / BINB_DB */
template <typename C>
ADK_INLINE C bin_da(int op, C x, C z, C g) {
  switch (op) {
  case BIN_ADD: case BIN_SUB: return g;
  case BIN_MUL: return g * z;
  case BIN_DIV: return g / z;
  case BIN_POW: return z == 0 ? 0 * g : g * z * m_pow(x, z - 1);
  case BIN_MAXIMUM: return x > z ? g : x == z ? g * (C)0.5 : 0 * g;
  case BIN_MINIMUM: return x < z ? g : x == z ? g * (C)0.5 : 0 * g;
  default: return 0 * g;
  }
}
template <typename C>
ADK_INLINE C bin_db(int op, C x, C z, C g) {
  switch (op) {
  case BIN_ADD: return g;
  case BIN_SUB: return -g;
  case BIN_MUL: return g * x;
  case BIN_DIV: return -g * x / (z * z);
  case BIN_POW: return (x == 0 && z >= 0) ? 0 * g : g * m_pow(x, z) * m_log(x);
  case BIN_MAXIMUM: return z > x ? g : x == z ? g * (C)0.5 : 0 * g;
  case BIN_MINIMUM: return z < x ? g : x == z ? g * (C)0.5 : 0 * g;
  default: return 0 * g;
  }
}

/* ---- the functors: outputs o[NO] from inputs a[NI] ------------------------------ */
struct UnaryF {
  int op;
  template <typename C> __device__ void operator()(C *o, const C *a) const { o[0] = un_op(op, a[0]); }
};
struct UnaryBwdF {   /* inputs: v, dy */
  int op;
  template <typename C> __device__ void operator()(C *o, const C *a) const { o[0] = un_bwd(op, a[0], a[1]); }
};
struct BinaryF {
  int op;
  template <typename C> __device__ void operator()(C *o, const C *a) const { o[0] = bin_op(op, a[0], a[1]); }
};
struct BinaryBwdF {  /* inputs: a, b, dy; outputs da, db */
  int op;
  template <typename C> __device__ void operator()(C *o, const C *a) const {
    o[0] = bin_da(op, a[0], a[1], a[2]);
    o[1] = bin_db(op, a[0], a[1], a[2]);
  }
};
struct ScalarF {     /* a op s, or s op a */
  int op;
  double s;
  bool first;
  template <typename C> __device__ void operator()(C *o, const C *a) const {
    o[0] = first ? bin_op(op, (C)s, a[0]) : bin_op(op, a[0], (C)s);
  }
};
struct ScalarBwdF {  /* inputs: a, dy; output: the tensor's gradient */
  int op;
  double s;
  bool first;
  template <typename C> __device__ void operator()(C *o, const C *a) const {
    o[0] = first ? bin_db(op, (C)s, a[0], a[1]) : bin_da(op, a[0], (C)s, a[1]);
  }
};
struct ClampF {
  double lo, hi;
  template <typename C> __device__ void operator()(C *o, const C *a) const {
    C v = a[0];
    v = v < (C)lo ? (C)lo : v;
    o[0] = v > (C)hi ? (C)hi : v;
  }
};
struct ClampBwdF {   /* inputs: x, dy */
  double lo, hi;
  template <typename C> __device__ void operator()(C *o, const C *a) const {
    o[0] = (a[0] >= (C)lo && a[0] <= (C)hi) ? a[1] : (C)0;
  }
};

/* ---- storage types --------------------------------------------------------------- */
struct adk_b8 { uint8_t v; };   /* a bool result */
ADK_INLINE void adk_st(adk_b8 *p, float v) { p->v = v != 0; }
ADK_INLINE void adk_st(adk_b8 *p, double v) { p->v = v != 0; }

template <typename S> struct ct_of { typedef float type; };
template <> struct ct_of<double> { typedef double type; };

template <typename S, int V> struct alignas(sizeof(S) * V) vec_t { S v[V]; };

/* ---- kernels ------------------------------------------------------------------------ */

/* operands 0..NO-1 are outputs of storage SO (data NULL: not wanted), NO.. are
 * inputs of storage SI */
template <typename SO, typename SI, int NO, int NI, typename IDX, typename F>
__global__ void ew_strided_kernel(adk_iter it, int64_t n, F f) {
  typedef typename ct_of<SI>::type C;
  ADK_GRID_LOOP(i, n) {
    int64_t off[NO + NI];
    adk_offsets<IDX, NO + NI>(it, (IDX)i, off);
    C in[NI], out[NO];
#pragma unroll
    for (int k = 0; k < NI; k++) in[k] = adk_ld((const SI *)it.data[NO + k] + off[NO + k]);
    f(out, in);
#pragma unroll
    for (int k = 0; k < NO; k++)
      if (it.data[k]) adk_st((SO *)it.data[k] + off[k], out[k]);
  }
}

template <int NO, int NI> struct flat_args {
  void *out[NO];
  const void *in[NI];
  bool in_vec[NI];     /* stride 1 (else stride 0: a broadcast scalar) */
};

/* a flat run of n elements, V per thread (vector loads when V > 1) */
template <typename SO, typename SI, int NO, int NI, int V, typename F>
__global__ void ew_flat_kernel(flat_args<NO, NI> p, int64_t n, F f) {
  typedef typename ct_of<SI>::type C;
  const int64_t nv = n / V;
  ADK_GRID_LOOP(i, nv) {
    C in[NI][V], out[NO][V];
#pragma unroll
    for (int k = 0; k < NI; k++) {
      if (p.in_vec[k]) {
        const vec_t<SI, V> t = ((const vec_t<SI, V> *)p.in[k])[i];
#pragma unroll
        for (int u = 0; u < V; u++) in[k][u] = adk_ld(&t.v[u]);
      } else {
        const C s = adk_ld((const SI *)p.in[k]);
#pragma unroll
        for (int u = 0; u < V; u++) in[k][u] = s;
      }
    }
#pragma unroll
    for (int u = 0; u < V; u++) {
      C a[NI], o[NO];
#pragma unroll
      for (int k = 0; k < NI; k++) a[k] = in[k][u];
      f(o, a);
#pragma unroll
      for (int k = 0; k < NO; k++) out[k][u] = o[k];
    }
#pragma unroll
    for (int k = 0; k < NO; k++) {
      if (!p.out[k]) continue;
      vec_t<SO, V> t;
#pragma unroll
      for (int u = 0; u < V; u++) adk_st(&t.v[u], out[k][u]);
      ((vec_t<SO, V> *)p.out[k])[i] = t;
    }
  }
  /* the tail that does not fill a vector */
  for (int64_t j = nv * V + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (int64_t)blockDim.x * gridDim.x) {
    C a[NI], o[NO];
#pragma unroll
    for (int k = 0; k < NI; k++) a[k] = adk_ld((const SI *)p.in[k] + (p.in_vec[k] ? j : 0));
    f(o, a);
#pragma unroll
    for (int k = 0; k < NO; k++)
      if (p.out[k]) adk_st((SO *)p.out[k] + j, o[k]);
  }
}

/* Two dims after coalescing, each operand contiguous along the inner one or
 * constant along it (stride 0): the broadcasts of NCHW training, x (N, C, H, W)
 * against a per-(n, c) or per-channel scale. Rows of `cols` elements, V per
 * thread with vector loads; one index division per V elements instead of one
 * per element in ew_strided_kernel. */
template <int NO, int NI> struct rows_args {
  void *out[NO];
  const void *in[NI];
  int64_t out_rs[NO], in_rs[NI];   /* row strides, elements */
  bool in_vec[NI];                 /* inner stride 1 (else 0: one value per row) */
};

template <typename SO, typename SI, int NO, int NI, int V, typename IDX, typename F>
__global__ void ew_rows_kernel(rows_args<NO, NI> p, int64_t rows, int64_t cols, F f) {
  typedef typename ct_of<SI>::type C;
  const IDX cv = (IDX)(cols / V), nv = (IDX)rows * cv;
  for (IDX i = (IDX)blockIdx.x * blockDim.x + threadIdx.x; i < nv; i += (IDX)blockDim.x * gridDim.x) {
    const IDX r = i / cv, c = i - r * cv;
    C in[NI][V], out[NO][V];
#pragma unroll
    for (int k = 0; k < NI; k++) {
      const SI *base = (const SI *)p.in[k] + (int64_t)r * p.in_rs[k];
      if (p.in_vec[k]) {
        const vec_t<SI, V> t = ((const vec_t<SI, V> *)base)[c];
#pragma unroll
        for (int u = 0; u < V; u++) in[k][u] = adk_ld(&t.v[u]);
      } else {
        const C v = adk_ld(base);
#pragma unroll
        for (int u = 0; u < V; u++) in[k][u] = v;
      }
    }
#pragma unroll
    for (int u = 0; u < V; u++) {
      C a[NI], o[NO];
#pragma unroll
      for (int k = 0; k < NI; k++) a[k] = in[k][u];
      f(o, a);
#pragma unroll
      for (int k = 0; k < NO; k++) out[k][u] = o[k];
    }
#pragma unroll
    for (int k = 0; k < NO; k++) {
      if (!p.out[k]) continue;
      vec_t<SO, V> t;
#pragma unroll
      for (int u = 0; u < V; u++) adk_st(&t.v[u], out[k][u]);
      ((vec_t<SO, V> *)((SO *)p.out[k] + (int64_t)r * p.out_rs[k]))[c] = t;
    }
  }
}

/* Integer results wrap like C integer arithmetic (the CPU's ew_store, not the
 * saturating conversion of copies): out-of-range doubles and NaN are pinned to
 * int64 first, then truncated to the width. */
ADK_INLINE int64_t ew_to_i64(double v) {
  if (v != v) return 0;
  if (v >= 9223372036854775807.0) return INT64_MAX;
  if (v <= -9223372036854775808.0) return INT64_MIN;
  return (int64_t)v;
}
ADK_INLINE void ew_store_any(int dt, void *base, int64_t k, double v) {
  switch (dt) {
  case ADK_I64: ((int64_t *)base)[k] = ew_to_i64(v); break;
  case ADK_I32: ((int32_t *)base)[k] = (int32_t)(uint32_t)(uint64_t)ew_to_i64(v); break;
  case ADK_U8: ((uint8_t *)base)[k] = (uint8_t)(uint64_t)ew_to_i64(v); break;
  default: adk_store_any(dt, base, k, v); break;
  }
}

/* integer and bool tensors: double arithmetic, runtime dtypes per operand */
template <int NO, int NI, typename IDX, typename F>
__global__ void ew_any_kernel(adk_iter it, int64_t n, F f) {
  ADK_GRID_LOOP(i, n) {
    int64_t off[NO + NI];
    adk_offsets<IDX, NO + NI>(it, (IDX)i, off);
    double in[NI], out[NO];
#pragma unroll
    for (int k = 0; k < NI; k++) in[k] = adk_load_any(it.dtype[NO + k], it.data[NO + k], off[NO + k]);
    f(out, in);
#pragma unroll
    for (int k = 0; k < NO; k++)
      if (it.data[k]) ew_store_any(it.dtype[k], it.data[k], off[k], out[k]);
  }
}

/* ---- dispatch ------------------------------------------------------------------------- */

#define EW_THREADS 256

template <typename SO, typename SI, int NO, int NI, typename F>
static cudaError_t run_typed(const adk_ctx *c, adk_iter &it, int64_t n, F f) {
  if (adk_iter_is_flat(&it)) {
    constexpr int V = 16 / (int)sizeof(SI) >= 16 / (int)sizeof(SO) ? 16 / (int)sizeof(SO) : 16 / (int)sizeof(SI);
    flat_args<NO, NI> p;
    bool aligned = true;
    for (int k = 0; k < NO; k++) {
      p.out[k] = it.data[k];
      if (p.out[k] && ((uintptr_t)p.out[k] % (sizeof(SO) * V))) aligned = false;
    }
    for (int k = 0; k < NI; k++) {
      p.in[k] = it.data[NO + k];
      p.in_vec[k] = it.strides[NO + k][0] != 0;
      if (p.in_vec[k] && ((uintptr_t)p.in[k] % (sizeof(SI) * V))) aligned = false;
    }
    if (aligned && V > 1 && n >= V) {
      unsigned blocks = adk_blocks(c, n / V, EW_THREADS);
      ew_flat_kernel<SO, SI, NO, NI, V, F><<<blocks, EW_THREADS, 0, c->stream>>>(p, n, f);
    } else {
      ew_flat_kernel<SO, SI, NO, NI, 1, F><<<adk_blocks(c, n, EW_THREADS), EW_THREADS, 0, c->stream>>>(p, n, f);
    }
    return adk_launched();
  }
  if (it.ndim == 2) {   /* rows with per-row broadcasts: ew_rows_kernel when everything aligns */
    constexpr int V = 16 / (int)sizeof(SI) >= 16 / (int)sizeof(SO) ? 16 / (int)sizeof(SO) : 16 / (int)sizeof(SI);
    const int64_t rows = it.shape[0], cols = it.shape[1];
    rows_args<NO, NI> p;
    bool ok = V > 1 && cols % V == 0;
    for (int k = 0; k < NO && ok; k++) {
      p.out[k] = it.data[k];
      p.out_rs[k] = it.strides[k][0];
      if (p.out[k] && (it.strides[k][1] != 1 || (uintptr_t)p.out[k] % (sizeof(SO) * V) || p.out_rs[k] % V)) ok = false;
    }
    for (int k = 0; k < NI && ok; k++) {
      p.in[k] = it.data[NO + k];
      p.in_rs[k] = it.strides[NO + k][0];
      p.in_vec[k] = it.strides[NO + k][1] == 1;
      if (it.strides[NO + k][1] != 0 && !p.in_vec[k]) ok = false;
      if (p.in_vec[k] && ((uintptr_t)p.in[k] % (sizeof(SI) * V) || p.in_rs[k] % V)) ok = false;
    }
    if (ok) {
      const unsigned blocks = adk_blocks(c, n / V, EW_THREADS);
      if (n / V < ((int64_t)1 << 31))
        ew_rows_kernel<SO, SI, NO, NI, V, uint32_t, F><<<blocks, EW_THREADS, 0, c->stream>>>(p, rows, cols, f);
      else
        ew_rows_kernel<SO, SI, NO, NI, V, uint64_t, F><<<blocks, EW_THREADS, 0, c->stream>>>(p, rows, cols, f);
      return adk_launched();
    }
  }
  unsigned blocks = adk_blocks(c, n, EW_THREADS);
  if (n < ((int64_t)1 << 31))
    ew_strided_kernel<SO, SI, NO, NI, uint32_t, F><<<blocks, EW_THREADS, 0, c->stream>>>(it, n, f);
  else
    ew_strided_kernel<SO, SI, NO, NI, uint64_t, F><<<blocks, EW_THREADS, 0, c->stream>>>(it, n, f);
  return adk_launched();
}

template <int NO, int NI, typename F>
static cudaError_t run_any(const adk_ctx *c, adk_iter &it, int64_t n, F f) {
  unsigned blocks = adk_blocks(c, n, EW_THREADS);
  if (n < ((int64_t)1 << 31)) ew_any_kernel<NO, NI, uint32_t, F><<<blocks, EW_THREADS, 0, c->stream>>>(it, n, f);
  else ew_any_kernel<NO, NI, uint64_t, F><<<blocks, EW_THREADS, 0, c->stream>>>(it, n, f);
  return adk_launched();
}

/* Runs f over it: inputs (operands NO..) share dtype `in`; outputs are that dtype,
 * or bool when bool_out (only ops that can produce bools instantiate that). */
template <int NO, int NI, bool CAN_BOOL, typename F>
static cudaError_t run(const adk_ctx *c, const adk_iter *it_in, int in, bool bool_out, F f) {
  adk_iter it = *it_in;
  adk_iter_coalesce(&it);
  const int64_t n = adk_iter_numel(&it);
  if (n == 0) return cudaSuccess;
  if constexpr (CAN_BOOL) {
    if (bool_out) {
      switch (in) {
      case ADK_F32: return run_typed<adk_b8, float, NO, NI>(c, it, n, f);
      case ADK_F64: return run_typed<adk_b8, double, NO, NI>(c, it, n, f);
      case ADK_F16: return run_typed<adk_b8, adk_f16, NO, NI>(c, it, n, f);
      case ADK_BF16: return run_typed<adk_b8, adk_bf16, NO, NI>(c, it, n, f);
      default: return run_any<NO, NI>(c, it, n, f);
      }
    }
  }
  switch (in) {
  case ADK_F32: return run_typed<float, float, NO, NI>(c, it, n, f);
  case ADK_F64: return run_typed<double, double, NO, NI>(c, it, n, f);
  case ADK_F16: return run_typed<adk_f16, adk_f16, NO, NI>(c, it, n, f);
  case ADK_BF16: return run_typed<adk_bf16, adk_bf16, NO, NI>(c, it, n, f);
  default: return run_any<NO, NI>(c, it, n, f);
  }
}

/* ---- launchers ----------------------------------------------------------------------- */

extern "C" cudaError_t ad_launch_unary(const adk_ctx *c, const adk_iter *it, int op) {
  return run<1, 1, true>(c, it, it->dtype[1], un_is_bool(op), UnaryF{op});
}
extern "C" cudaError_t ad_launch_unary_bwd(const adk_ctx *c, const adk_iter *it, int op) {
  return run<1, 2, false>(c, it, it->dtype[2], false, UnaryBwdF{op});
}
extern "C" cudaError_t ad_launch_binary(const adk_ctx *c, const adk_iter *it, int op) {
  return run<1, 2, true>(c, it, it->dtype[1], bin_is_bool(op), BinaryF{op});
}
extern "C" cudaError_t ad_launch_binary_bwd(const adk_ctx *c, const adk_iter *it, int op) {
  return run<2, 3, false>(c, it, it->dtype[2], false, BinaryBwdF{op});
}
extern "C" cudaError_t ad_launch_binary_scalar(const adk_ctx *c, const adk_iter *it, int op, double s,
                                               bool scalar_first) {
  return run<1, 1, true>(c, it, it->dtype[1], bin_is_bool(op), ScalarF{op, s, scalar_first});
}
extern "C" cudaError_t ad_launch_binary_scalar_bwd(const adk_ctx *c, const adk_iter *it, int op, double s,
                                                   bool scalar_first) {
  return run<1, 2, false>(c, it, it->dtype[1], false, ScalarBwdF{op, s, scalar_first});
}
extern "C" cudaError_t ad_launch_clamp(const adk_ctx *c, const adk_iter *it, double lo, double hi) {
  return run<1, 1, false>(c, it, it->dtype[1], false, ClampF{lo, hi});
}
extern "C" cudaError_t ad_launch_clamp_bwd(const adk_ctx *c, const adk_iter *it, double lo, double hi) {
  return run<1, 2, false>(c, it, it->dtype[1], false, ClampBwdF{lo, hi});
}

/* where: a byte copy per element, so one kernel per element size serves every dtype */
template <typename U, typename IDX>
__global__ void where_kernel(adk_iter it, int64_t n) {
  ADK_GRID_LOOP(i, n) {
    int64_t off[4];
    adk_offsets<IDX, 4>(it, (IDX)i, off);
    const bool cnd = ((const uint8_t *)it.data[1])[off[1]] != 0;
    ((U *)it.data[0])[off[0]] = cnd ? ((const U *)it.data[2])[off[2]] : ((const U *)it.data[3])[off[3]];
  }
}

template <typename U>
static void launch_where(const adk_ctx *c, const adk_iter &it, int64_t n) {
  unsigned blocks = adk_blocks(c, n, EW_THREADS);
  if (n < ((int64_t)1 << 31)) where_kernel<U, uint32_t><<<blocks, EW_THREADS, 0, c->stream>>>(it, n);
  else where_kernel<U, uint64_t><<<blocks, EW_THREADS, 0, c->stream>>>(it, n);
}

extern "C" cudaError_t ad_launch_where(const adk_ctx *c, const adk_iter *it_in) {
  adk_iter it = *it_in;
  adk_iter_coalesce(&it);
  const int64_t n = adk_iter_numel(&it);
  if (n == 0) return cudaSuccess;
  switch (adk_dtype_size(it.dtype[0])) {
  case 8: launch_where<uint64_t>(c, it, n); break;
  case 4: launch_where<uint32_t>(c, it, n); break;
  case 2: launch_where<uint16_t>(c, it, n); break;
  default: launch_where<uint8_t>(c, it, n); break;
  }
  return adk_launched();
}
