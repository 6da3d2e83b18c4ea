/* cpu_elementwise.c: the CPU kernels of the elementwise family (the struct in
 * backend_elementwise.h).
 *
 * Every kernel is one walk of a small strided iterator over 2 to 5 same-shape
 * operands. The iterator first coalesces dims (drops size-1 dims, merges dims
 * whose strides chain), so a contiguous tensor, or a broadcast operand over a
 * contiguous one, becomes a single row; it then hands rows (cut into chunks
 * for OpenMP) to a row function. Row functions switch on the op ONCE per row
 * and run a tight loop per op, with separate loops for the all-contiguous and
 * scalar-operand (stride 0) layouts, so gcc -O3 vectorises f32/f64. Other
 * dtypes go through a per-element double load/store path. An operand read
 * across its contiguous dim (a transpose) is walked in square tiles instead
 * of rows, so its cache lines are reused.
 *
 * The scalar formulas come from mathinl.h (sigmoid, silu, gelu, softplus and
 * their derivatives) so the CUDA kernels compute the same thing. One
 * exception for speed: f32 exp, sigmoid and silu use ew_expf below, a
 * branch-free exp that vectorises (libm's expf is a call per element and
 * dominated SiLU-heavy training steps), with the same formulas around it.
 * The loop bodies are written once as file-local macros over the element
 * type T and instantiated for float and double; <tgmath.h> makes
 * exp/log/... pick the float or double function from T.
 *
 * no-trapping-math: FP exceptions are never enabled in this library, and
 * without the flag gcc refuses to if-convert the NaN-aware compares (max,
 * relu, clamp, where) and leaves those loops scalar. Set before the includes
 * so that inline helpers get the same options and still inline. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "backend_elementwise.h"
#include "mathinl.h"
#include <tgmath.h>

#define EW_MAX_OPS 5
#define EW_CHUNK 16384          /* elements per OpenMP work item */
#define EW_OMP_MIN_CHEAP 65536  /* add, mul, copy-like ops: below this, one thread */
#define EW_OMP_MIN_HEAVY 4096   /* exp, pow, gelu ...: worth threading sooner */

/* ew_expf: the shared vectorisable f32 exp of mathinl.h */
#define ew_expf ad_fast_expf

/* mathinl.h's ad_sigmoidf (e^-|x| keeps it stable) on ew_expf */
static inline float ew_sigmoidf(float x) {
  const float e = ew_expf(-fabsf(x));
  const float s = 1.0f / (1.0f + e);
  return x >= 0 ? s : e * s;
}
static inline float ew_siluf(float x) { return x * ew_sigmoidf(x); }
static inline float ew_silu_gradf(float x) {
  const float s = ew_sigmoidf(x);
  return s * (1.0f + x * (1.0f - s));
}

/* The f32/f64 row functions are also compiled for AVX2 and picked at load
 * time (the build targets baseline x86-64, SSE2): twice the vector width for
 * the compute-bound ops (exp, silu, their gradients). "avx2" does not imply
 * FMA, so both versions round identically. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define EW_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define EW_CLONES
#endif

/* type-generic wrappers over mathinl.h's float/double pairs */
#define G_EXP(v) _Generic((v), float: ew_expf, default: exp)(v)
#define G_SIGMOID(v) _Generic((v), float: ew_sigmoidf, default: ad_sigmoid)(v)
#define G_SILU(v) _Generic((v), float: ew_siluf, default: ad_silu)(v)
#define G_SILU_GRAD(v) _Generic((v), float: ew_silu_gradf, default: ad_silu_grad)(v)
#define G_GELU(v) _Generic((v), float: ad_geluf, default: ad_gelu)(v)
#define G_GELU_GRAD(v) _Generic((v), float: ad_gelu_gradf, default: ad_gelu_grad)(v)
#define G_SOFTPLUS(v) _Generic((v), float: ad_softplusf, default: ad_softplus)(v)

/* ------------------------------------------------------------------------ */
/* the strided iterator                                                      */

/* p[k]: pointer to the row's first element of operand k (NULL for an absent
 * optional operand); s[k]: its stride in elements along the row. */
typedef void (*ew_row_fn)(const void *ctx, char *const *p, const int64_t *s, int64_t n);

/* generic row context: the op and one dtype per operand slot */
typedef struct {
  int op;
  ad_dtype dt[EW_MAX_OPS];
  double lo, hi; /* clamp bounds */
  int64_t es[EW_MAX_OPS]; /* element sizes of dt, filled by ew_run */
} ew_ctx;

typedef struct {
  int nops, ndim;
  int64_t n;
  int64_t shape[AD_MAX_DIMS];
  int64_t strides[EW_MAX_OPS][AD_MAX_DIMS];
  char *base[EW_MAX_OPS];
  int64_t esize[EW_MAX_OPS];
} ew_iter;

static void ew_init(ew_iter *it, const ad_tensor *like) {
  it->nops = 0;
  it->ndim = like->ndim;
  it->n = 1;
  for (int d = 0; d < like->ndim; d++) {
    it->shape[d] = like->shape[d];
    it->n *= like->shape[d];
  }
}

/* t may be NULL: an absent optional operand (stride 0, NULL pointers). */
static void ew_add(ew_iter *it, const ad_tensor *t) {
  int k = it->nops++;
  for (int d = 0; d < it->ndim; d++) it->strides[k][d] = t ? t->strides[d] : 0;
  it->base[k] = t ? (char *)ad_data(t) : NULL;
  it->esize[k] = t ? (int64_t)ad_dtype_size(t->dtype) : 0;
}

/* A scalar held by the caller, seen as an operand with stride 0 everywhere. */
static void ew_add_scalar(ew_iter *it, const void *p, int64_t esize) {
  int k = it->nops++;
  for (int d = 0; d < it->ndim; d++) it->strides[k][d] = 0;
  it->base[k] = (char *)p;
  it->esize[k] = esize;
}

/* Drop size-1 dims and merge a dim into the one before it when, for every
 * operand, the outer stride equals inner stride * inner size. */
static void ew_coalesce(ew_iter *it) {
  int nd = 0;
  int64_t shape[AD_MAX_DIMS], st[EW_MAX_OPS][AD_MAX_DIMS];
  for (int d = 0; d < it->ndim; d++) {
    if (it->shape[d] == 1) continue;
    bool merge = nd > 0;
    for (int k = 0; merge && k < it->nops; k++)
      if (st[k][nd - 1] != it->strides[k][d] * it->shape[d]) merge = false;
    if (merge) {
      shape[nd - 1] *= it->shape[d];
      for (int k = 0; k < it->nops; k++) st[k][nd - 1] = it->strides[k][d];
    } else {
      shape[nd] = it->shape[d];
      for (int k = 0; k < it->nops; k++) st[k][nd] = it->strides[k][d];
      nd++;
    }
  }
  if (nd == 0) { /* one element */
    shape[0] = 1;
    for (int k = 0; k < it->nops; k++) st[k][0] = 0;
    nd = 1;
  }
  it->ndim = nd;
  for (int d = 0; d < nd; d++) {
    it->shape[d] = shape[d];
    for (int k = 0; k < it->nops; k++) it->strides[k][d] = st[k][d];
  }
}

/* An operand that walks the inner dim with a large stride but is contiguous
 * along the dim before it (a transposed input): row-by-row iteration would
 * fetch a new cache line per element and use 4 bytes of it; square tiles
 * reuse each fetched line across the tile's rows. */
#define EW_TILE 64

static bool ew_wants_tiles(const ew_iter *it) {
  const int nd = it->ndim;
  if (nd < 2 || it->shape[nd - 1] < EW_TILE / 4 || it->shape[nd - 2] < EW_TILE / 4) return false;
  for (int k = 0; k < it->nops; k++) {
    int64_t si = it->strides[k][nd - 1], so = it->strides[k][nd - 2];
    if ((si > 16 || si < -16) && (so == 1 || so == -1)) return true;
  }
  return false;
}

static void ew_run(ew_iter *it, ew_row_fn fn, ew_ctx *ctx, int64_t omp_min) {
  if (it->n == 0) return;
  for (int k = 0; k < EW_MAX_OPS; k++) ctx->es[k] = (int64_t)ad_dtype_size(ctx->dt[k]);
  ew_coalesce(it);
  const int nd = it->ndim, nops = it->nops;
  const ew_iter *cit = it;
  const int64_t inner = it->shape[nd - 1];
  if (ew_wants_tiles(it)) {
    const int64_t rows2 = it->shape[nd - 2];
    const int64_t outer = it->n / (inner * rows2);
    const int64_t ti = (rows2 + EW_TILE - 1) / EW_TILE, tj = (inner + EW_TILE - 1) / EW_TILE;
    const int64_t items = outer * ti * tj;
#pragma omp parallel for schedule(static) if (cit->n >= omp_min && items > 1)
    for (int64_t w = 0; w < items; w++) {
      int64_t o = w / (ti * tj), i0 = (w / tj) % ti * EW_TILE, j0 = (w % tj) * EW_TILE;
      int64_t ilen = rows2 - i0 < EW_TILE ? rows2 - i0 : EW_TILE;
      int64_t jlen = inner - j0 < EW_TILE ? inner - j0 : EW_TILE;
      int64_t off[EW_MAX_OPS], s[EW_MAX_OPS];
      char *p[EW_MAX_OPS];
      for (int k = 0; k < nops; k++) off[k] = i0 * cit->strides[k][nd - 2] + j0 * cit->strides[k][nd - 1];
      for (int d = nd - 3; d >= 0; d--) {
        int64_t i = o % cit->shape[d];
        o /= cit->shape[d];
        for (int k = 0; k < nops; k++) off[k] += i * cit->strides[k][d];
      }
      for (int k = 0; k < nops; k++) s[k] = cit->strides[k][nd - 1];
      for (int64_t i = 0; i < ilen; i++) {
        for (int k = 0; k < nops; k++)
          p[k] = cit->base[k] ? cit->base[k] + (off[k] + i * cit->strides[k][nd - 2]) * cit->esize[k] : NULL;
        fn(ctx, p, s, jlen);
      }
    }
    return;
  }
  const int64_t rows = it->n / inner;
  const int64_t cpr = (inner + EW_CHUNK - 1) / EW_CHUNK; /* chunks per row */
  const int64_t items = rows * cpr;
#pragma omp parallel for schedule(static) if (cit->n >= omp_min && items > 1)
  for (int64_t w = 0; w < items; w++) {
    int64_t row = w / cpr, j0 = (w % cpr) * EW_CHUNK;
    int64_t len = inner - j0 < EW_CHUNK ? inner - j0 : EW_CHUNK;
    int64_t off[EW_MAX_OPS], s[EW_MAX_OPS];
    char *p[EW_MAX_OPS];
    for (int k = 0; k < nops; k++) off[k] = j0 * cit->strides[k][nd - 1];
    for (int d = nd - 2; d >= 0; d--) {
      int64_t i = row % cit->shape[d];
      row /= cit->shape[d];
      for (int k = 0; k < nops; k++) off[k] += i * cit->strides[k][d];
    }
    for (int k = 0; k < nops; k++) {
      p[k] = cit->base[k] ? cit->base[k] + off[k] * cit->esize[k] : NULL;
      s[k] = cit->strides[k][nd - 1];
    }
    fn(ctx, p, s, len);
  }
}

/* ------------------------------------------------------------------------ */
/* generic element access through double (f16, bf16, integers, bool)         */

static inline double ew_load(ad_dtype dt, const char *p) {
  switch (dt) {
  case AD_F32: return *(const float *)p;
  case AD_F64: return *(const double *)p;
  case AD_F16: return ad_f16_to_f32(*(const uint16_t *)p);
  case AD_BF16: return ad_bf16_to_f32(*(const uint16_t *)p);
  case AD_I64: return (double)*(const int64_t *)p;
  case AD_I32: return *(const int32_t *)p;
  case AD_U8: return *(const uint8_t *)p;
  case AD_BOOL: return *(const uint8_t *)p != 0;
  default: return 0;
  }
}

/* Integers wrap like C integer arithmetic (PyTorch's behaviour); doubles
 * outside int64's range and NaN are pinned first because converting them is
 * undefined in C. */
static inline int64_t ew_to_i64(double v) {
  if (v != v) return 0;
  if (v >= 9223372036854775807.0) return INT64_MAX;
  if (v <= -9223372036854775808.0) return INT64_MIN;
  return (int64_t)v;
}

static inline void ew_store(ad_dtype dt, char *p, double v) {
  switch (dt) {
  case AD_F32: *(float *)p = (float)v; break;
  case AD_F64: *(double *)p = v; break;
  case AD_F16: *(uint16_t *)p = ad_f32_to_f16((float)v); break;
  case AD_BF16: *(uint16_t *)p = ad_f32_to_bf16((float)v); break;
  case AD_I64: *(int64_t *)p = ew_to_i64(v); break;
  case AD_I32: *(int32_t *)p = (int32_t)(uint32_t)(uint64_t)ew_to_i64(v); break;
  case AD_U8: *(uint8_t *)p = (uint8_t)(uint64_t)ew_to_i64(v); break;
  case AD_BOOL: *(uint8_t *)p = v != 0; break;
  default: break;
  }
}

#define EW_PTR(k, i) (p[k] + (i) * s[k] * c->es[k])

/* ------------------------------------------------------------------------ */
/* scalar formulas in double (the generic path)                              */

static double un_f64(ad_unop op, double x) {
  switch (op) {
  case AD_UN_NEG: return -x;
  case AD_UN_EXP: return exp(x);
  case AD_UN_LOG: return log(x);
  case AD_UN_LOG1P: return log1p(x);
  case AD_UN_EXPM1: return expm1(x);
  case AD_UN_SQRT: return sqrt(x);
  case AD_UN_RSQRT: return 1.0 / sqrt(x);
  case AD_UN_ABS: return fabs(x);
  case AD_UN_SIGN: return x > 0 ? 1.0 : x < 0 ? -1.0 : x;
  case AD_UN_SIN: return sin(x);
  case AD_UN_COS: return cos(x);
  case AD_UN_TANH: return tanh(x);
  case AD_UN_SIGMOID: return ad_sigmoid(x);
  case AD_UN_RELU: return x < 0 ? 0.0 : x;
  case AD_UN_SILU: return ad_silu(x);
  case AD_UN_GELU: return ad_gelu(x);
  case AD_UN_SOFTPLUS: return ad_softplus(x);
  case AD_UN_SQUARE: return x * x;
  case AD_UN_RECIPROCAL: return 1.0 / x;
  case AD_UN_FLOOR: return floor(x);
  case AD_UN_CEIL: return ceil(x);
  case AD_UN_ROUND: return rint(x);
  case AD_UN_ISFINITE: return isfinite(x) ? 1.0 : 0.0;
  case AD_UN_ISNAN: return x != x ? 1.0 : 0.0;
  case AD_UN_LOGICAL_NOT: return x == 0 ? 1.0 : 0.0;
  default: return 0;
  }
}

/* v is y = op(x) when ad_unop_bwd_uses_y(op), else x */
static double un_bwd_f64(ad_unop op, double v, double g) {
  switch (op) {
  case AD_UN_NEG: return -g;
  case AD_UN_EXP: return g * v;
  case AD_UN_LOG: return g / v;
  case AD_UN_LOG1P: return g / (1.0 + v);
  case AD_UN_EXPM1: return g * (v + 1.0);
  case AD_UN_SQRT: return g / (2.0 * v);
  case AD_UN_RSQRT: return -0.5 * g * v * v * v;
  case AD_UN_ABS: return v > 0 ? g : v < 0 ? -g : 0.0;
  case AD_UN_SIN: return g * cos(v);
  case AD_UN_COS: return -g * sin(v);
  case AD_UN_TANH: return g * (1.0 - v * v);
  case AD_UN_SIGMOID: return g * v * (1.0 - v);
  case AD_UN_RELU: return v > 0 ? g : 0.0;
  case AD_UN_SILU: return g * ad_silu_grad(v);
  case AD_UN_GELU: return g * ad_gelu_grad(v);
  case AD_UN_SOFTPLUS: return v > 20.0 ? g : g * ad_sigmoid(v);
  case AD_UN_SQUARE: return 2.0 * v * g;
  case AD_UN_RECIPROCAL: return -g * v * v;
  default: return 0.0; /* sign, floor, ceil, round: piecewise constant */
  }
}

static double bin_f64(ad_binop op, double x, double z) {
  switch (op) {
  case AD_BIN_ADD: return x + z;
  case AD_BIN_SUB: return x - z;
  case AD_BIN_MUL: return x * z;
  case AD_BIN_DIV: return x / z;
  case AD_BIN_POW: return pow(x, z);
  case AD_BIN_MAXIMUM: return (x != x || x > z) ? x : z;
  case AD_BIN_MINIMUM: return (x != x || x < z) ? x : z;
  case AD_BIN_EQ: return x == z;
  case AD_BIN_NE: return x != z;
  case AD_BIN_LT: return x < z;
  case AD_BIN_LE: return x <= z;
  case AD_BIN_GT: return x > z;
  case AD_BIN_GE: return x >= z;
  case AD_BIN_LOGICAL_AND: return (x != 0) && (z != 0);
  case AD_BIN_LOGICAL_OR: return (x != 0) || (z != 0);
  case AD_BIN_LOGICAL_XOR: return (x != 0) != (z != 0);
  default: return 0;
  }
}

/* The gradient formulas of binary ops, x = a, z = b, g = dy. pow: zero where
 * the textbook formula is 0 * inf (b == 0 for da; a == 0 and b >= 0 for db),
 * as PyTorch does. maximum/minimum: ties split the gradient in half. */
#define BINB_DA(op, x, z, g, half)                                                          \
  ((op) == AD_BIN_ADD ? (g)                                                                 \
   : (op) == AD_BIN_SUB ? (g)                                                               \
   : (op) == AD_BIN_MUL ? (g) * (z)                                                         \
   : (op) == AD_BIN_DIV ? (g) / (z)                                                         \
   : (op) == AD_BIN_POW ? ((z) == 0 ? 0 * (g) : (g) * (z) * pow((x), (z) - 1))              \
   : (op) == AD_BIN_MAXIMUM ? ((x) > (z) ? (g) : (x) == (z) ? (g) * (half) : 0 * (g))       \
   : (op) == AD_BIN_MINIMUM ? ((x) < (z) ? (g) : (x) == (z) ? (g) * (half) : 0 * (g))       \
                            : 0 * (g))
#define BINB_DB(op, x, z, g, half)                                                          \
  ((op) == AD_BIN_ADD ? (g)                                                                 \
   : (op) == AD_BIN_SUB ? -(g)                                                              \
   : (op) == AD_BIN_MUL ? (g) * (x)                                                         \
   : (op) == AD_BIN_DIV ? -(g) * (x) / ((z) * (z))                                          \
   : (op) == AD_BIN_POW ? (((x) == 0 && (z) >= 0) ? 0 * (g) : (g) * pow((x), (z)) * log(x)) \
   : (op) == AD_BIN_MAXIMUM ? ((z) > (x) ? (g) : (x) == (z) ? (g) * (half) : 0 * (g))       \
   : (op) == AD_BIN_MINIMUM ? ((z) < (x) ? (g) : (x) == (z) ? (g) * (half) : 0 * (g))       \
                            : 0 * (g))

/* ------------------------------------------------------------------------ */
/* unary                                                                      */

/* y[i] = EXPR(x) over the row; x is the element of type T */
#define EW_UN_LOOPS(T, TO, EXPR)                                                    \
  do {                                                                              \
    if (sy == 1 && sx == 1) {                                                       \
      for (int64_t i = 0; i < n; i++) { const T x = xp[i]; yp[i] = (TO)(EXPR); }    \
    } else {                                                                        \
      for (int64_t i = 0; i < n; i++) {                                             \
        const T x = xp[i * sx];                                                     \
        yp[i * sy] = (TO)(EXPR);                                                    \
      }                                                                             \
    }                                                                               \
  } while (0)

#define EW_UN_SWITCH(T)                                                                   \
  switch ((ad_unop)c->op) {                                                               \
  case AD_UN_NEG: EW_UN_LOOPS(T, T, -x); break;                                           \
  case AD_UN_EXP: EW_UN_LOOPS(T, T, G_EXP(x)); break;                                       \
  case AD_UN_LOG: EW_UN_LOOPS(T, T, log(x)); break;                                       \
  case AD_UN_LOG1P: EW_UN_LOOPS(T, T, log1p(x)); break;                                   \
  case AD_UN_EXPM1: EW_UN_LOOPS(T, T, expm1(x)); break;                                   \
  case AD_UN_SQRT: EW_UN_LOOPS(T, T, sqrt(x)); break;                                     \
  case AD_UN_RSQRT: EW_UN_LOOPS(T, T, (T)1 / sqrt(x)); break;                             \
  case AD_UN_ABS: EW_UN_LOOPS(T, T, fabs(x)); break;                                      \
  case AD_UN_SIGN: EW_UN_LOOPS(T, T, x > 0 ? (T)1 : x < 0 ? (T)-1 : x); break;             \
  case AD_UN_SIN: EW_UN_LOOPS(T, T, sin(x)); break;                                       \
  case AD_UN_COS: EW_UN_LOOPS(T, T, cos(x)); break;                                       \
  case AD_UN_TANH: EW_UN_LOOPS(T, T, tanh(x)); break;                                     \
  case AD_UN_SIGMOID: EW_UN_LOOPS(T, T, G_SIGMOID(x)); break;                             \
  case AD_UN_RELU: EW_UN_LOOPS(T, T, x < 0 ? (T)0 : x); break;                             \
  case AD_UN_SILU: EW_UN_LOOPS(T, T, G_SILU(x)); break;                                   \
  case AD_UN_GELU: EW_UN_LOOPS(T, T, G_GELU(x)); break;                                   \
  case AD_UN_SOFTPLUS: EW_UN_LOOPS(T, T, G_SOFTPLUS(x)); break;                           \
  case AD_UN_SQUARE: EW_UN_LOOPS(T, T, x * x); break;                                     \
  case AD_UN_RECIPROCAL: EW_UN_LOOPS(T, T, (T)1 / x); break;                              \
  case AD_UN_FLOOR: EW_UN_LOOPS(T, T, floor(x)); break;                                   \
  case AD_UN_CEIL: EW_UN_LOOPS(T, T, ceil(x)); break;                                     \
  case AD_UN_ROUND: EW_UN_LOOPS(T, T, rint(x)); break;                                    \
  default: break;                                                                         \
  }

#define EW_UN_BOOL_SWITCH(T)                                                              \
  switch ((ad_unop)c->op) {                                                               \
  case AD_UN_ISFINITE: EW_UN_LOOPS(T, uint8_t, isfinite(x) ? 1 : 0); break;                \
  case AD_UN_ISNAN: EW_UN_LOOPS(T, uint8_t, x != x); break;                               \
  case AD_UN_LOGICAL_NOT: EW_UN_LOOPS(T, uint8_t, x == 0); break;                         \
  default: break;                                                                         \
  }

EW_CLONES static void un_row_f32(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  float *yp = (float *)p[0];
  const float *xp = (const float *)p[1];
  const int64_t sy = s[0], sx = s[1];
  EW_UN_SWITCH(float)
}

EW_CLONES static void un_row_f64(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  double *yp = (double *)p[0];
  const double *xp = (const double *)p[1];
  const int64_t sy = s[0], sx = s[1];
  EW_UN_SWITCH(double)
}

static void un_bool_row_f32(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  uint8_t *yp = (uint8_t *)p[0];
  const float *xp = (const float *)p[1];
  const int64_t sy = s[0], sx = s[1];
  EW_UN_BOOL_SWITCH(float)
}

static void un_bool_row_f64(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  uint8_t *yp = (uint8_t *)p[0];
  const double *xp = (const double *)p[1];
  const int64_t sy = s[0], sx = s[1];
  EW_UN_BOOL_SWITCH(double)
}

static void un_row_generic(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  for (int64_t i = 0; i < n; i++)
    ew_store(c->dt[0], EW_PTR(0, i), un_f64((ad_unop)c->op, ew_load(c->dt[1], EW_PTR(1, i))));
}

static bool un_is_heavy(ad_unop op) {
  switch (op) {
  case AD_UN_NEG: case AD_UN_ABS: case AD_UN_SIGN: case AD_UN_RELU: case AD_UN_SQUARE:
  case AD_UN_FLOOR: case AD_UN_CEIL: case AD_UN_ROUND: case AD_UN_ISFINITE: case AD_UN_ISNAN:
  case AD_UN_LOGICAL_NOT:
    return false;
  default:
    return true;
  }
}

static ad_status cpu_unary(ad_tensor *y, const ad_tensor *x, ad_unop op) {
  ew_ctx c = {.op = op, .dt = {y->dtype, x->dtype}};
  bool is_bool = ad_unop_is_bool(op);
  if ((is_bool && y->dtype != AD_BOOL) || (!is_bool && y->dtype != x->dtype))
    return AD_FAIL(AD_EDTYPE, "%s: cpu kernel got %s -> %s", ad_unop_name(op), ad_dtype_name(x->dtype),
                   ad_dtype_name(y->dtype));
  ew_row_fn fn = un_row_generic;
  if (x->dtype == AD_F32) fn = is_bool ? un_bool_row_f32 : un_row_f32;
  else if (x->dtype == AD_F64) fn = is_bool ? un_bool_row_f64 : un_row_f64;
  ew_iter it;
  ew_init(&it, y);
  ew_add(&it, y);
  ew_add(&it, x);
  ew_run(&it, fn, &c, un_is_heavy(op) ? EW_OMP_MIN_HEAVY : EW_OMP_MIN_CHEAP);
  return AD_OK;
}

/* ---- unary backward: dx = dy * op'(v), v = x or y ---------------------- */

#define EW_UNB_LOOPS(T, EXPR)                                                         \
  do {                                                                                \
    if (sd == 1 && sv == 1 && sg == 1) {                                              \
      for (int64_t i = 0; i < n; i++) { const T v = vp[i], g = gp[i]; (void)v; (void)g; dp[i] = (EXPR); } \
    } else {                                                                          \
      for (int64_t i = 0; i < n; i++) {                                               \
        const T v = vp[i * sv], g = gp[i * sg];                                       \
        (void)v; (void)g;                                                             \
        dp[i * sd] = (EXPR);                                                          \
      }                                                                               \
    }                                                                                 \
  } while (0)

#define EW_UNB_SWITCH(T)                                                                      \
  switch ((ad_unop)c->op) {                                                                   \
  case AD_UN_NEG: EW_UNB_LOOPS(T, -g); break;                                                 \
  case AD_UN_EXP: EW_UNB_LOOPS(T, g * v); break;                                              \
  case AD_UN_LOG: EW_UNB_LOOPS(T, g / v); break;                                              \
  case AD_UN_LOG1P: EW_UNB_LOOPS(T, g / (1 + v)); break;                                      \
  case AD_UN_EXPM1: EW_UNB_LOOPS(T, g * (v + 1)); break;                                      \
  case AD_UN_SQRT: EW_UNB_LOOPS(T, g / (2 * v)); break;                                       \
  case AD_UN_RSQRT: EW_UNB_LOOPS(T, (T)-0.5 * g * v * v * v); break;                          \
  case AD_UN_ABS: EW_UNB_LOOPS(T, v > 0 ? g : v < 0 ? -g : (T)0); break;                      \
  case AD_UN_SIN: EW_UNB_LOOPS(T, g * cos(v)); break;                                         \
  case AD_UN_COS: EW_UNB_LOOPS(T, -g * sin(v)); break;                                        \
  case AD_UN_TANH: EW_UNB_LOOPS(T, g * (1 - v * v)); break;                                   \
  case AD_UN_SIGMOID: EW_UNB_LOOPS(T, g * v * (1 - v)); break;                                \
  case AD_UN_RELU: EW_UNB_LOOPS(T, v > 0 ? g : (T)0); break;                                  \
  case AD_UN_SILU: EW_UNB_LOOPS(T, g * G_SILU_GRAD(v)); break;                                \
  case AD_UN_GELU: EW_UNB_LOOPS(T, g * G_GELU_GRAD(v)); break;                                \
  case AD_UN_SOFTPLUS: EW_UNB_LOOPS(T, v > 20 ? g : g * G_SIGMOID(v)); break;                 \
  case AD_UN_SQUARE: EW_UNB_LOOPS(T, 2 * v * g); break;                                       \
  case AD_UN_RECIPROCAL: EW_UNB_LOOPS(T, -g * v * v); break;                                  \
  default: EW_UNB_LOOPS(T, (T)0); break;                                                      \
  }

EW_CLONES static void unb_row_f32(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  float *dp = (float *)p[0];
  const float *vp = (const float *)p[1], *gp = (const float *)p[2];
  const int64_t sd = s[0], sv = s[1], sg = s[2];
  EW_UNB_SWITCH(float)
}

EW_CLONES static void unb_row_f64(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  double *dp = (double *)p[0];
  const double *vp = (const double *)p[1], *gp = (const double *)p[2];
  const int64_t sd = s[0], sv = s[1], sg = s[2];
  EW_UNB_SWITCH(double)
}

static void unb_row_generic(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  for (int64_t i = 0; i < n; i++) {
    double v = ew_load(c->dt[1], EW_PTR(1, i)), g = ew_load(c->dt[2], EW_PTR(2, i));
    ew_store(c->dt[0], EW_PTR(0, i), un_bwd_f64((ad_unop)c->op, v, g));
  }
}

static ad_status cpu_unary_bwd(ad_tensor *dx, const ad_tensor *x, const ad_tensor *y, const ad_tensor *dy,
                               ad_unop op) {
  const ad_tensor *v = ad_unop_bwd_uses_y(op) ? y : x;
  if (!v) return AD_FAIL(AD_EINVAL, "%s backward: missing %s", ad_unop_name(op), ad_unop_bwd_uses_y(op) ? "y" : "x");
  if (v->dtype != dx->dtype || dy->dtype != dx->dtype)
    return AD_FAIL(AD_EDTYPE, "%s backward: dtypes differ", ad_unop_name(op));
  ew_ctx c = {.op = op, .dt = {dx->dtype, v->dtype, dy->dtype}};
  ew_row_fn fn = dx->dtype == AD_F32 ? unb_row_f32 : dx->dtype == AD_F64 ? unb_row_f64 : unb_row_generic;
  ew_iter it;
  ew_init(&it, dx);
  ew_add(&it, dx);
  ew_add(&it, v);
  ew_add(&it, dy);
  ew_run(&it, fn, &c, un_is_heavy(op) ? EW_OMP_MIN_HEAVY : EW_OMP_MIN_CHEAP);
  return AD_OK;
}

/* ------------------------------------------------------------------------ */
/* binary                                                                     */

/* y[i] = EXPR(x, z) with x from a, z from b; separate loops for the layouts
 * the iterator produces most, so each one vectorises. */
#define EW_BIN_LOOPS(T, TO, EXPR)                                                       \
  do {                                                                                  \
    if (sy == 1 && sa == 1 && sb == 1) {                                                \
      for (int64_t i = 0; i < n; i++) { const T x = ap[i], z = bp[i]; yp[i] = (TO)(EXPR); } \
    } else if (sy == 1 && sa == 1 && sb == 0) {                                         \
      const T z = bp[0];                                                                \
      for (int64_t i = 0; i < n; i++) { const T x = ap[i]; yp[i] = (TO)(EXPR); }         \
    } else if (sy == 1 && sa == 0 && sb == 1) {                                         \
      const T x = ap[0];                                                                \
      for (int64_t i = 0; i < n; i++) { const T z = bp[i]; yp[i] = (TO)(EXPR); }         \
    } else {                                                                            \
      for (int64_t i = 0; i < n; i++) {                                                 \
        const T x = ap[i * sa], z = bp[i * sb];                                         \
        yp[i * sy] = (TO)(EXPR);                                                        \
      }                                                                                 \
    }                                                                                   \
  } while (0)

#define EW_BIN_SWITCH(T)                                                                \
  switch ((ad_binop)c->op) {                                                            \
  case AD_BIN_ADD: EW_BIN_LOOPS(T, T, x + z); break;                                    \
  case AD_BIN_SUB: EW_BIN_LOOPS(T, T, x - z); break;                                    \
  case AD_BIN_MUL: EW_BIN_LOOPS(T, T, x * z); break;                                    \
  case AD_BIN_DIV: EW_BIN_LOOPS(T, T, x / z); break;                                    \
  case AD_BIN_POW: EW_BIN_LOOPS(T, T, pow(x, z)); break;                                \
  case AD_BIN_MAXIMUM: EW_BIN_LOOPS(T, T, (x != x || x > z) ? x : z); break;            \
  case AD_BIN_MINIMUM: EW_BIN_LOOPS(T, T, (x != x || x < z) ? x : z); break;            \
  default: break;                                                                       \
  }

#define EW_BIN_BOOL_SWITCH(T)                                                           \
  switch ((ad_binop)c->op) {                                                            \
  case AD_BIN_EQ: EW_BIN_LOOPS(T, uint8_t, x == z); break;                              \
  case AD_BIN_NE: EW_BIN_LOOPS(T, uint8_t, x != z); break;                              \
  case AD_BIN_LT: EW_BIN_LOOPS(T, uint8_t, x < z); break;                               \
  case AD_BIN_LE: EW_BIN_LOOPS(T, uint8_t, x <= z); break;                              \
  case AD_BIN_GT: EW_BIN_LOOPS(T, uint8_t, x > z); break;                               \
  case AD_BIN_GE: EW_BIN_LOOPS(T, uint8_t, x >= z); break;                              \
  case AD_BIN_LOGICAL_AND: EW_BIN_LOOPS(T, uint8_t, (x != 0) & (z != 0)); break;        \
  case AD_BIN_LOGICAL_OR: EW_BIN_LOOPS(T, uint8_t, (x != 0) | (z != 0)); break;         \
  case AD_BIN_LOGICAL_XOR: EW_BIN_LOOPS(T, uint8_t, (x != 0) ^ (z != 0)); break;        \
  default: break;                                                                       \
  }

EW_CLONES static void bin_row_f32(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  float *yp = (float *)p[0];
  const float *ap = (const float *)p[1], *bp = (const float *)p[2];
  const int64_t sy = s[0], sa = s[1], sb = s[2];
  EW_BIN_SWITCH(float)
}

EW_CLONES static void bin_row_f64(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  double *yp = (double *)p[0];
  const double *ap = (const double *)p[1], *bp = (const double *)p[2];
  const int64_t sy = s[0], sa = s[1], sb = s[2];
  EW_BIN_SWITCH(double)
}

static void bin_bool_row_f32(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  uint8_t *yp = (uint8_t *)p[0];
  const float *ap = (const float *)p[1], *bp = (const float *)p[2];
  const int64_t sy = s[0], sa = s[1], sb = s[2];
  EW_BIN_BOOL_SWITCH(float)
}

static void bin_bool_row_f64(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  uint8_t *yp = (uint8_t *)p[0];
  const double *ap = (const double *)p[1], *bp = (const double *)p[2];
  const int64_t sy = s[0], sa = s[1], sb = s[2];
  EW_BIN_BOOL_SWITCH(double)
}

static void bin_row_generic(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  for (int64_t i = 0; i < n; i++) {
    double x = ew_load(c->dt[1], EW_PTR(1, i)), z = ew_load(c->dt[2], EW_PTR(2, i));
    ew_store(c->dt[0], EW_PTR(0, i), bin_f64((ad_binop)c->op, x, z));
  }
}

static ew_row_fn bin_row_for(ad_dtype dt, ad_binop op) {
  bool is_bool = ad_binop_is_bool(op);
  if (dt == AD_F32) return is_bool ? bin_bool_row_f32 : bin_row_f32;
  if (dt == AD_F64) return is_bool ? bin_bool_row_f64 : bin_row_f64;
  return bin_row_generic;
}

static ad_status bin_check(const ad_tensor *y, ad_dtype in, ad_binop op) {
  ad_dtype want = ad_binop_is_bool(op) ? AD_BOOL : in;
  if (y->dtype != want)
    return AD_FAIL(AD_EDTYPE, "%s: cpu kernel got %s inputs and a %s output", ad_binop_name(op),
                   ad_dtype_name(in), ad_dtype_name(y->dtype));
  return AD_OK;
}

static ad_status cpu_binary(ad_tensor *y, const ad_tensor *a, const ad_tensor *b, ad_binop op) {
  if (a->dtype != b->dtype)
    return AD_FAIL(AD_EDTYPE, "%s: cpu kernel got %s and %s", ad_binop_name(op), ad_dtype_name(a->dtype),
                   ad_dtype_name(b->dtype));
  AD_TRY(bin_check(y, a->dtype, op));
  ew_ctx c = {.op = op, .dt = {y->dtype, a->dtype, b->dtype}};
  ew_iter it;
  ew_init(&it, y);
  ew_add(&it, y);
  ew_add(&it, a);
  ew_add(&it, b);
  ew_run(&it, bin_row_for(a->dtype, op), &c, op == AD_BIN_POW ? EW_OMP_MIN_HEAVY : EW_OMP_MIN_CHEAP);
  return AD_OK;
}

/* The scalar's storage: f32 and f64 tensors see it in their own type (the
 * fast loops need one element type); the generic path reads it as f64 so
 * an integer tensor compared with 2.5 compares exactly. */
typedef union { float f; double d; } ew_scalar;

static const void *ew_scalar_for(ew_scalar *u, ad_dtype dt, double s, ad_dtype *sdt, int64_t *esize) {
  if (dt == AD_F32) {
    u->f = (float)s;
    *sdt = AD_F32;
    *esize = 4;
    return &u->f;
  }
  u->d = s;
  *sdt = AD_F64;
  *esize = 8;
  return &u->d;
}

static ad_status cpu_binary_scalar(ad_tensor *y, const ad_tensor *a, double s, ad_binop op, bool scalar_first) {
  AD_TRY(bin_check(y, a->dtype, op));
  ew_scalar u;
  ad_dtype sdt;
  int64_t es;
  const void *sp = ew_scalar_for(&u, a->dtype, s, &sdt, &es);
  ew_ctx c = {.op = op};
  c.dt[0] = y->dtype;
  c.dt[scalar_first ? 2 : 1] = a->dtype;
  c.dt[scalar_first ? 1 : 2] = sdt;
  ew_iter it;
  ew_init(&it, y);
  ew_add(&it, y);
  if (scalar_first) {
    ew_add_scalar(&it, sp, es);
    ew_add(&it, a);
  } else {
    ew_add(&it, a);
    ew_add_scalar(&it, sp, es);
  }
  ew_run(&it, bin_row_for(a->dtype, op), &c, op == AD_BIN_POW ? EW_OMP_MIN_HEAVY : EW_OMP_MIN_CHEAP);
  return AD_OK;
}

/* ---- binary backward: p = {da, db, a, b, dy} --------------------------- */

#define EW_BINB_LOOP(T, SDA, SDB, SA, SB, SG, DAEXPR, DBEXPR)                            \
  do {                                                                                  \
    if (dap && dbp) {                                                                   \
      for (int64_t i = 0; i < n; i++) {                                                 \
        const T x = ap[i * (SA)], z = bp[i * (SB)], g = gp[i * (SG)];                   \
        dap[i * (SDA)] = (DAEXPR);                                                      \
        dbp[i * (SDB)] = (DBEXPR);                                                      \
      }                                                                                 \
    } else if (dap) {                                                                   \
      for (int64_t i = 0; i < n; i++) {                                                 \
        const T x = ap[i * (SA)], z = bp[i * (SB)], g = gp[i * (SG)];                   \
        dap[i * (SDA)] = (DAEXPR);                                                      \
      }                                                                                 \
    } else {                                                                            \
      for (int64_t i = 0; i < n; i++) {                                                 \
        const T x = ap[i * (SA)], z = bp[i * (SB)], g = gp[i * (SG)];                   \
        dbp[i * (SDB)] = (DBEXPR);                                                      \
      }                                                                                 \
    }                                                                                   \
  } while (0)

#define EW_BINB_LOOPS(T, DAEXPR, DBEXPR)                                                  \
  do {                                                                                  \
    const bool outs1 = (!dap || sda == 1) && (!dbp || sdb == 1) && sg == 1;             \
    if (outs1 && sa == 1 && sb == 1) EW_BINB_LOOP(T, 1, 1, 1, 1, 1, DAEXPR, DBEXPR);    \
    else if (outs1 && sa == 1 && sb == 0) EW_BINB_LOOP(T, 1, 1, 1, 0, 1, DAEXPR, DBEXPR); \
    else if (outs1 && sa == 0 && sb == 1) EW_BINB_LOOP(T, 1, 1, 0, 1, 1, DAEXPR, DBEXPR); \
    else EW_BINB_LOOP(T, sda, sdb, sa, sb, sg, DAEXPR, DBEXPR);                         \
  } while (0)

#define EW_BINB_SWITCH(T)                                                               \
  switch ((ad_binop)c->op) {                                                            \
  case AD_BIN_ADD: EW_BINB_LOOPS(T, BINB_DA(AD_BIN_ADD, x, z, g, (T)0.5),                \
                                 BINB_DB(AD_BIN_ADD, x, z, g, (T)0.5)); break;           \
  case AD_BIN_SUB: EW_BINB_LOOPS(T, BINB_DA(AD_BIN_SUB, x, z, g, (T)0.5),                \
                                 BINB_DB(AD_BIN_SUB, x, z, g, (T)0.5)); break;           \
  case AD_BIN_MUL: EW_BINB_LOOPS(T, BINB_DA(AD_BIN_MUL, x, z, g, (T)0.5),                \
                                 BINB_DB(AD_BIN_MUL, x, z, g, (T)0.5)); break;           \
  case AD_BIN_DIV: EW_BINB_LOOPS(T, BINB_DA(AD_BIN_DIV, x, z, g, (T)0.5),                \
                                 BINB_DB(AD_BIN_DIV, x, z, g, (T)0.5)); break;           \
  case AD_BIN_POW: EW_BINB_LOOPS(T, BINB_DA(AD_BIN_POW, x, z, g, (T)0.5),                \
                                 BINB_DB(AD_BIN_POW, x, z, g, (T)0.5)); break;           \
  case AD_BIN_MAXIMUM: EW_BINB_LOOPS(T, BINB_DA(AD_BIN_MAXIMUM, x, z, g, (T)0.5),        \
                                     BINB_DB(AD_BIN_MAXIMUM, x, z, g, (T)0.5)); break;   \
  case AD_BIN_MINIMUM: EW_BINB_LOOPS(T, BINB_DA(AD_BIN_MINIMUM, x, z, g, (T)0.5),        \
                                     BINB_DB(AD_BIN_MINIMUM, x, z, g, (T)0.5)); break;   \
  default: break;                                                                       \
  }

EW_CLONES static void binb_row_f32(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  float *dap = (float *)p[0], *dbp = (float *)p[1];
  const float *ap = (const float *)p[2], *bp = (const float *)p[3], *gp = (const float *)p[4];
  const int64_t sda = s[0], sdb = s[1], sa = s[2], sb = s[3], sg = s[4];
  EW_BINB_SWITCH(float)
}

EW_CLONES static void binb_row_f64(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  double *dap = (double *)p[0], *dbp = (double *)p[1];
  const double *ap = (const double *)p[2], *bp = (const double *)p[3], *gp = (const double *)p[4];
  const int64_t sda = s[0], sdb = s[1], sa = s[2], sb = s[3], sg = s[4];
  EW_BINB_SWITCH(double)
}

static void binb_row_generic(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  const ad_binop op = (ad_binop)c->op;
  for (int64_t i = 0; i < n; i++) {
    double x = ew_load(c->dt[2], EW_PTR(2, i)), z = ew_load(c->dt[3], EW_PTR(3, i));
    double g = ew_load(c->dt[4], EW_PTR(4, i));
    if (p[0]) ew_store(c->dt[0], EW_PTR(0, i), BINB_DA(op, x, z, g, 0.5));
    if (p[1]) ew_store(c->dt[1], EW_PTR(1, i), BINB_DB(op, x, z, g, 0.5));
  }
}

static ad_status binb_check(const ad_tensor *da, const ad_tensor *db, ad_dtype dt, const ad_tensor *dy,
                            ad_binop op) {
  if (op > AD_BIN_MINIMUM) return AD_FAIL(AD_EINVAL, "%s: not differentiable", ad_binop_name(op));
  if ((da && da->dtype != dt) || (db && db->dtype != dt) || dy->dtype != dt)
    return AD_FAIL(AD_EDTYPE, "%s backward: dtypes differ", ad_binop_name(op));
  return AD_OK;
}

static ew_row_fn binb_row_for(ad_dtype dt) {
  return dt == AD_F32 ? binb_row_f32 : dt == AD_F64 ? binb_row_f64 : binb_row_generic;
}

static ad_status cpu_binary_bwd(ad_tensor *da, ad_tensor *db, const ad_tensor *a, const ad_tensor *b,
                                const ad_tensor *dy, ad_binop op) {
  if (!da && !db) return AD_OK;
  if (a->dtype != b->dtype) return AD_FAIL(AD_EDTYPE, "%s backward: dtypes differ", ad_binop_name(op));
  AD_TRY(binb_check(da, db, a->dtype, dy, op));
  ew_ctx c = {.op = op, .dt = {a->dtype, a->dtype, a->dtype, a->dtype, a->dtype}};
  ew_iter it;
  ew_init(&it, dy);
  ew_add(&it, da);
  ew_add(&it, db);
  ew_add(&it, a);
  ew_add(&it, b);
  ew_add(&it, dy);
  ew_run(&it, binb_row_for(a->dtype), &c, op == AD_BIN_POW ? EW_OMP_MIN_HEAVY : EW_OMP_MIN_CHEAP);
  return AD_OK;
}

static ad_status cpu_binary_scalar_bwd(ad_tensor *da, const ad_tensor *a, double s, const ad_tensor *dy,
                                       ad_binop op, bool scalar_first) {
  AD_TRY(binb_check(da, NULL, a->dtype, dy, op));
  ew_scalar u;
  ad_dtype sdt;
  int64_t es;
  const void *sp = ew_scalar_for(&u, a->dtype, s, &sdt, &es);
  ew_ctx c = {.op = op, .dt = {a->dtype, a->dtype, a->dtype, a->dtype, a->dtype}};
  c.dt[scalar_first ? 2 : 3] = sdt;
  ew_iter it;
  ew_init(&it, da);
  /* the tensor's gradient is da when it is the left operand, db otherwise */
  ew_add(&it, scalar_first ? NULL : da);
  ew_add(&it, scalar_first ? da : NULL);
  if (scalar_first) {
    ew_add_scalar(&it, sp, es);
    ew_add(&it, a);
  } else {
    ew_add(&it, a);
    ew_add_scalar(&it, sp, es);
  }
  ew_add(&it, dy);
  ew_run(&it, binb_row_for(a->dtype), &c, op == AD_BIN_POW ? EW_OMP_MIN_HEAVY : EW_OMP_MIN_CHEAP);
  return AD_OK;
}

/* ------------------------------------------------------------------------ */
/* clamp                                                                      */

#define EW_CLAMP_BODY(T)                                                                  \
  do {                                                                                    \
    const T lo = (T)c->lo, hi = (T)c->hi;                                                 \
    if (sy == 1 && sx == 1) {                                                             \
      for (int64_t i = 0; i < n; i++) {                                                   \
        T v = xp[i];                                                                      \
        v = v < lo ? lo : v;                                                              \
        yp[i] = v > hi ? hi : v;                                                          \
      }                                                                                   \
    } else {                                                                              \
      for (int64_t i = 0; i < n; i++) {                                                   \
        T v = xp[i * sx];                                                                 \
        v = v < lo ? lo : v;                                                              \
        yp[i * sy] = v > hi ? hi : v;                                                     \
      }                                                                                   \
    }                                                                                     \
  } while (0)

static void clamp_row_f32(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  float *yp = (float *)p[0];
  const float *xp = (const float *)p[1];
  const int64_t sy = s[0], sx = s[1];
  EW_CLAMP_BODY(float);
}

static void clamp_row_f64(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  double *yp = (double *)p[0];
  const double *xp = (const double *)p[1];
  const int64_t sy = s[0], sx = s[1];
  EW_CLAMP_BODY(double);
}

static void clamp_row_generic(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  for (int64_t i = 0; i < n; i++) {
    double v = ew_load(c->dt[1], EW_PTR(1, i));
    v = v < c->lo ? c->lo : v;
    ew_store(c->dt[0], EW_PTR(0, i), v > c->hi ? c->hi : v);
  }
}

static void clampb_row_generic(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  for (int64_t i = 0; i < n; i++) {
    double v = ew_load(c->dt[1], EW_PTR(1, i)), g = ew_load(c->dt[2], EW_PTR(2, i));
    ew_store(c->dt[0], EW_PTR(0, i), (v >= c->lo && v <= c->hi) ? g : 0.0);
  }
}

#define EW_CLAMPB_BODY(T)                                                                 \
  do {                                                                                    \
    const T lo = (T)c->lo, hi = (T)c->hi;                                                 \
    if (sd == 1 && sx == 1 && sg == 1) {                                                  \
      for (int64_t i = 0; i < n; i++) dp[i] = (xp[i] >= lo && xp[i] <= hi) ? gp[i] : (T)0; \
    } else {                                                                              \
      for (int64_t i = 0; i < n; i++) {                                                   \
        const T v = xp[i * sx];                                                           \
        dp[i * sd] = (v >= lo && v <= hi) ? gp[i * sg] : (T)0;                            \
      }                                                                                   \
    }                                                                                     \
  } while (0)

static void clampb_row_f32(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  float *dp = (float *)p[0];
  const float *xp = (const float *)p[1], *gp = (const float *)p[2];
  const int64_t sd = s[0], sx = s[1], sg = s[2];
  EW_CLAMPB_BODY(float);
}

static void clampb_row_f64(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const ew_ctx *c = ctx;
  double *dp = (double *)p[0];
  const double *xp = (const double *)p[1], *gp = (const double *)p[2];
  const int64_t sd = s[0], sx = s[1], sg = s[2];
  EW_CLAMPB_BODY(double);
}

static ad_status cpu_clamp(ad_tensor *y, const ad_tensor *x, bool has_min, double min, bool has_max,
                           double max) {
  if (y->dtype != x->dtype) return AD_FAIL(AD_EDTYPE, "clamp: cpu kernel got %s -> %s", ad_dtype_name(x->dtype),
                                           ad_dtype_name(y->dtype));
  ew_ctx c = {.op = 0, .dt = {y->dtype, x->dtype}, .lo = has_min ? min : -INFINITY, .hi = has_max ? max : INFINITY};
  ew_row_fn fn = x->dtype == AD_F32 ? clamp_row_f32 : x->dtype == AD_F64 ? clamp_row_f64 : clamp_row_generic;
  ew_iter it;
  ew_init(&it, y);
  ew_add(&it, y);
  ew_add(&it, x);
  ew_run(&it, fn, &c, EW_OMP_MIN_CHEAP);
  return AD_OK;
}

static ad_status cpu_clamp_bwd(ad_tensor *dx, const ad_tensor *x, const ad_tensor *dy, bool has_min, double min,
                               bool has_max, double max) {
  if (dx->dtype != x->dtype || dy->dtype != x->dtype) return AD_FAIL(AD_EDTYPE, "clamp backward: dtypes differ");
  ew_ctx c = {.op = 0, .dt = {dx->dtype, x->dtype, dy->dtype}, .lo = has_min ? min : -INFINITY,
              .hi = has_max ? max : INFINITY};
  ew_row_fn fn = x->dtype == AD_F32 ? clampb_row_f32 : x->dtype == AD_F64 ? clampb_row_f64 : clampb_row_generic;
  ew_iter it;
  ew_init(&it, dx);
  ew_add(&it, dx);
  ew_add(&it, x);
  ew_add(&it, dy);
  ew_run(&it, fn, &c, EW_OMP_MIN_CHEAP);
  return AD_OK;
}

/* ------------------------------------------------------------------------ */
/* where: a byte copy per element, so one loop per element size serves every dtype */

#define EW_WHERE_LOOP(T)                                                                  \
  do {                                                                                    \
    T *yp = (T *)p[0];                                                                    \
    const T *ap = (const T *)p[2], *bp = (const T *)p[3];                                 \
    if (s[0] == 1 && s[1] == 1 && s[2] == 1 && s[3] == 1) {                               \
      for (int64_t i = 0; i < n; i++) yp[i] = cp[i] ? ap[i] : bp[i];                      \
    } else {                                                                              \
      for (int64_t i = 0; i < n; i++) yp[i * s[0]] = cp[i * s[1]] ? ap[i * s[2]] : bp[i * s[3]]; \
    }                                                                                     \
  } while (0)

static void where_row(const void *ctx, char *const *p, const int64_t *s, int64_t n) {
  const size_t es = ad_dtype_size(((const ew_ctx *)ctx)->dt[0]);
  const uint8_t *cp = (const uint8_t *)p[1];
  switch (es) {
  case 1: EW_WHERE_LOOP(uint8_t); break;
  case 2: EW_WHERE_LOOP(uint16_t); break;
  case 4: EW_WHERE_LOOP(uint32_t); break;
  case 8: EW_WHERE_LOOP(uint64_t); break;
  default: break;
  }
}

static ad_status cpu_where(ad_tensor *y, const ad_tensor *cond, const ad_tensor *a, const ad_tensor *b) {
  if (cond->dtype != AD_BOOL) return AD_FAIL(AD_EDTYPE, "where: condition must be bool, got %s",
                                              ad_dtype_name(cond->dtype));
  if (a->dtype != y->dtype || b->dtype != y->dtype) return AD_FAIL(AD_EDTYPE, "where: dtypes differ");
  ew_ctx c = {.op = 0, .dt = {y->dtype, AD_BOOL, a->dtype, b->dtype}};
  ew_iter it;
  ew_init(&it, y);
  ew_add(&it, y);
  ew_add(&it, cond);
  ew_add(&it, a);
  ew_add(&it, b);
  ew_run(&it, where_row, &c, EW_OMP_MIN_CHEAP);
  return AD_OK;
}

const struct ad_elementwise_kernels ad_cpu_elementwise_kernels = {
    .unary = cpu_unary,
    .unary_bwd = cpu_unary_bwd,
    .binary = cpu_binary,
    .binary_bwd = cpu_binary_bwd,
    .binary_scalar = cpu_binary_scalar,
    .binary_scalar_bwd = cpu_binary_scalar_bwd,
    .clamp = cpu_clamp,
    .clamp_bwd = cpu_clamp_bwd,
    .where = cpu_where,
};
