/* elementwise.c: front ends and backward rules of the elementwise family
 * (ops.h, "elementwise"): unary math and activations, binary arithmetic and
 * comparisons, scalar variants, clamp, where, and the in-place accumulate the
 * autograd engine uses.
 *
 * One generic path serves every op: the front end broadcasts the shapes,
 * promotes dtypes (recorded conversions, so gradients flow back through
 * them), views each input expanded to the output shape with stride 0 on the
 * broadcast dims (unrecorded views built here: the node's inputs are the
 * tensors of the input shapes, and the engine reduces broadcast gradients
 * centrally), allocates the output and calls one backend kernel. Backward
 * rules call the fused *_bwd kernels, one pass per gradient.
 *
 * Where a derivative is cheapest from the result (exp, sigmoid, tanh, ...)
 * the node saves the output; ad_record stores saved tensors as detached
 * aliases, so that makes no reference cycle. */
#include <math.h>
#include <string.h>

#include "ad.h"
#include "backend_elementwise.h"

static const char *const UNOP_NAMES[AD_UN_COUNT] = {
    "neg", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "abs", "sign", "sin", "cos", "tanh", "sigmoid",
    "relu", "silu", "gelu", "softplus", "square", "reciprocal", "floor", "ceil", "round", "isfinite", "isnan",
    "logical_not"};
static const char *const BINOP_NAMES[AD_BIN_COUNT] = {
    "add", "sub", "mul", "div", "pow", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge",
    "logical_and", "logical_or", "logical_xor"};

const char *ad_unop_name(ad_unop op) { return (unsigned)op < AD_UN_COUNT ? UNOP_NAMES[op] : "unary"; }
const char *ad_binop_name(ad_binop op) { return (unsigned)op < AD_BIN_COUNT ? BINOP_NAMES[op] : "binary"; }

/* ------------------------------------------------------------------------ */
/* helpers                                                                    */

static ad_status ew_kernels(const struct ad_elementwise_kernels **k, const ad_backend **bk, const ad_tensor *t) {
  const ad_backend *b = ad_backend_of(t);
  if (!b) return AD_EDEVICE; /* ad_backend_for has set the message */
  if (!b->elementwise) return AD_FAIL(AD_ENOTIMPL, "elementwise ops: no %s kernels", b->name);
  *k = b->elementwise;
  if (bk) *bk = b;
  return AD_OK;
}

#define EW_NEED(k, bk, member, opname)                                                          \
  do {                                                                                           \
    if (!(k)->member) return AD_FAIL(AD_ENOTIMPL, "%s: no %s kernel (%s)", (opname), (bk)->name, #member); \
  } while (0)

static ad_status same_device(const char *name, const ad_tensor *a, const ad_tensor *b) {
  ad_device da = ad_tensor_device(a), db = ad_tensor_device(b);
  if (ad_device_eq(da, db)) return AD_OK;
  char b1[32], b2[32];
  return AD_FAIL(AD_EDEVICE, "%s: tensors are on different devices (%s and %s)", name,
                 ad_device_str(da, b1, sizeof b1), ad_device_str(db, b2, sizeof b2));
}

/* bool < integer < floating point */
static int dtype_category(ad_dtype d) { return d == AD_BOOL ? 0 : ad_dtype_is_float(d) ? 2 : 1; }

/* PyTorch's result type for two tensors: a 0-d tensor only decides the dtype
 * when its category is higher (x_f32 * tensor(2.0, f64) stays f32). */
static ad_dtype result_type(const ad_tensor *a, const ad_tensor *b) {
  bool a0 = a->ndim == 0, b0 = b->ndim == 0;
  if (a0 != b0) {
    const ad_tensor *t = a0 ? b : a, *s = a0 ? a : b;
    return dtype_category(s->dtype) > dtype_category(t->dtype) ? s->dtype : t->dtype;
  }
  return ad_dtype_promote(a->dtype, b->dtype);
}

static bool is_integral(double s) { return isfinite(s) && s == floor(s); }

/* An unrecorded view of t broadcast to (nd, shape): stride 0 on new and
 * size-1-expanded dims. Retains t itself when the shape already matches. */
static ad_status expand_view(ad_tensor **out, const ad_tensor *t, int nd, const int64_t *shape) {
  if (ad_shape_eq(t->ndim, t->shape, nd, shape)) {
    ad_tensor_retain((ad_tensor *)t);
    *out = (ad_tensor *)t;
    return AD_OK;
  }
  int64_t st[AD_MAX_DIMS];
  for (int d = 0; d < nd; d++) {
    int i = d - (nd - t->ndim);
    st[d] = (i < 0 || (t->shape[i] == 1 && shape[d] != 1)) ? 0 : t->strides[i];
  }
  return ad_tensor_from_storage(out, t->storage, t->offset, nd, shape, st, t->dtype);
}

static ad_status retained(ad_tensor **out, const ad_tensor *t) {
  ad_tensor_retain((ad_tensor *)t);
  *out = (ad_tensor *)t;
  return AD_OK;
}

/* ------------------------------------------------------------------------ */
/* unary                                                                      */

static bool unop_float_only(ad_unop op) {
  switch (op) {
  case AD_UN_EXP: case AD_UN_LOG: case AD_UN_LOG1P: case AD_UN_EXPM1: case AD_UN_SQRT: case AD_UN_RSQRT:
  case AD_UN_SIN: case AD_UN_COS: case AD_UN_TANH: case AD_UN_SIGMOID: case AD_UN_SILU: case AD_UN_GELU:
  case AD_UN_SOFTPLUS: case AD_UN_RECIPROCAL:
    return true;
  default:
    return false;
  }
}

/* piecewise constant: recorded (the result requires grad, as in PyTorch),
 * with a zero gradient */
static bool unop_zero_grad(ad_unop op) {
  return op == AD_UN_SIGN || op == AD_UN_FLOOR || op == AD_UN_CEIL || op == AD_UN_ROUND;
}

static ad_status unary_backward(ad_node *node, ad_tensor *const *go, ad_tensor **gi) {
  gi[0] = NULL;
  const ad_tensor *dy = go[0];
  if (!node->needs_grad[0] || !dy) return AD_OK;
  ad_unop op = *(const ad_unop *)node->attrs;
  if (unop_zero_grad(op)) return ad_zeros(&gi[0], dy->ndim, dy->shape, dy->dtype, ad_tensor_device(dy));
  if (op == AD_UN_NEG) return ad_unary(&gi[0], dy, AD_UN_NEG);
  const struct ad_elementwise_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(ew_kernels(&k, &bk, dy));
  EW_NEED(k, bk, unary_bwd, ad_unop_name(op));
  ad_tensor *dx = NULL;
  AD_TRY(ad_empty(&dx, dy->ndim, dy->shape, dy->dtype, ad_tensor_device(dy)));
  ad_status st = k->unary_bwd(dx, node->saved[0], node->saved[1], dy, op);
  if (st != AD_OK) {
    ad_tensor_release(dx);
    return st;
  }
  gi[0] = dx;
  return AD_OK;
}

static const ad_opdef UNARY_DEFS[AD_UN_COUNT] = {
    {"neg", unary_backward},      {"exp", unary_backward},      {"log", unary_backward},
    {"log1p", unary_backward},    {"expm1", unary_backward},    {"sqrt", unary_backward},
    {"rsqrt", unary_backward},    {"abs", unary_backward},      {"sign", unary_backward},
    {"sin", unary_backward},      {"cos", unary_backward},      {"tanh", unary_backward},
    {"sigmoid", unary_backward},  {"relu", unary_backward},     {"silu", unary_backward},
    {"gelu", unary_backward},     {"softplus", unary_backward}, {"square", unary_backward},
    {"reciprocal", unary_backward}, {"floor", unary_backward},  {"ceil", unary_backward},
    {"round", unary_backward},    {"isfinite", NULL},           {"isnan", NULL},
    {"logical_not", NULL}};

ad_status ad_unary(ad_tensor **out, const ad_tensor *x, ad_unop op) {
  if ((unsigned)op >= AD_UN_COUNT) return AD_FAIL(AD_EINVAL, "unary: unknown op %d", (int)op);
  const char *name = ad_unop_name(op);
  if (!x) return AD_FAIL(AD_EINVAL, "%s: input is NULL", name);
  const struct ad_elementwise_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(ew_kernels(&k, &bk, x));
  EW_NEED(k, bk, unary, name);
  if (x->dtype == AD_BOOL && op == AD_UN_NEG)
    return AD_FAIL(AD_EDTYPE, "neg: bool tensors are not supported, use logical_not");
  const bool bool_out = ad_unop_is_bool(op);
  ad_status st = AD_OK;
  ad_tensor *xc = NULL, *y = NULL;
  if (unop_float_only(op) && !ad_dtype_is_float(x->dtype)) AD_TRY(ad_to_dtype(&xc, x, AD_F32));
  else retained(&xc, x);
  AD_TRY_GOTO(st, ad_empty(&y, xc->ndim, xc->shape, bool_out ? AD_BOOL : xc->dtype, ad_tensor_device(xc)), done);
  AD_TRY_GOTO(st, k->unary(y, xc, op), done);
  if (!bool_out && ad_needs_record(&xc, 1)) {
    ad_tensor *saved[2] = {NULL, NULL};
    if (ad_unop_bwd_uses_y(op)) {
      saved[1] = y; /* ad_record keeps a detached alias: no cycle */
    } else if (op != AD_UN_NEG && !unop_zero_grad(op)) {
      saved[0] = xc;
    }
    AD_TRY_GOTO(st, ad_record(&UNARY_DEFS[op], &y, 1, &xc, 1, saved, 2, &op, sizeof op), done);
  }
  *out = y;
  y = NULL;
done:
  ad_tensor_release(y);
  ad_tensor_release(xc);
  return st;
}

ad_status ad_neg(ad_tensor **out, const ad_tensor *x) { return ad_unary(out, x, AD_UN_NEG); }

/* ------------------------------------------------------------------------ */
/* binary                                                                     */

static ad_status binary_backward(ad_node *node, ad_tensor *const *go, ad_tensor **gi) {
  gi[0] = gi[1] = NULL;
  const ad_tensor *dy = go[0];
  if (!dy) return AD_OK;
  ad_binop op = *(const ad_binop *)node->attrs;
  if (op == AD_BIN_ADD || op == AD_BIN_SUB) {
    if (node->needs_grad[0]) retained(&gi[0], dy);
    if (node->needs_grad[1]) {
      if (op == AD_BIN_ADD) retained(&gi[1], dy);
      else AD_TRY(ad_unary(&gi[1], dy, AD_UN_NEG));
    }
    return AD_OK;
  }
  const struct ad_elementwise_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(ew_kernels(&k, &bk, dy));
  EW_NEED(k, bk, binary_bwd, ad_binop_name(op));
  ad_status st = AD_OK;
  ad_tensor *av = NULL, *bv = NULL, *da = NULL, *db = NULL;
  ad_device dev = ad_tensor_device(dy);
  AD_TRY_GOTO(st, expand_view(&av, node->saved[0], dy->ndim, dy->shape), done);
  AD_TRY_GOTO(st, expand_view(&bv, node->saved[1], dy->ndim, dy->shape), done);
  if (node->needs_grad[0]) AD_TRY_GOTO(st, ad_empty(&da, dy->ndim, dy->shape, av->dtype, dev), done);
  if (node->needs_grad[1]) AD_TRY_GOTO(st, ad_empty(&db, dy->ndim, dy->shape, bv->dtype, dev), done);
  AD_TRY_GOTO(st, k->binary_bwd(da, db, av, bv, dy, op), done);
  gi[0] = da;
  gi[1] = db;
  da = db = NULL;
done:
  ad_tensor_release(av);
  ad_tensor_release(bv);
  ad_tensor_release(da);
  ad_tensor_release(db);
  return st;
}

static const ad_opdef BINARY_DEFS[AD_BIN_MINIMUM + 1] = {
    {"add", binary_backward}, {"sub", binary_backward},     {"mul", binary_backward},
    {"div", binary_backward}, {"pow", binary_backward},     {"maximum", binary_backward},
    {"minimum", binary_backward}};

ad_status ad_binary(ad_tensor **out, const ad_tensor *a, const ad_tensor *b, ad_binop op) {
  if ((unsigned)op >= AD_BIN_COUNT) return AD_FAIL(AD_EINVAL, "binary: unknown op %d", (int)op);
  const char *name = ad_binop_name(op);
  if (!a || !b) return AD_FAIL(AD_EINVAL, "%s: input is NULL", name);
  AD_TRY(same_device(name, a, b));
  const struct ad_elementwise_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(ew_kernels(&k, &bk, a));
  EW_NEED(k, bk, binary, name);
  int nd;
  int64_t shape[AD_MAX_DIMS];
  AD_TRY(ad_broadcast_shapes(&nd, shape, a->ndim, a->shape, b->ndim, b->shape, name));
  const bool bool_out = ad_binop_is_bool(op);
  ad_dtype ct = result_type(a, b);
  if (op == AD_BIN_DIV && !ad_dtype_is_float(ct)) ct = AD_F32; /* true division */
  if (op == AD_BIN_SUB && ct == AD_BOOL)
    return AD_FAIL(AD_EDTYPE, "sub: subtracting bool tensors is not supported, use logical_xor");
  ad_status st = AD_OK;
  ad_tensor *ac = NULL, *bc = NULL, *av = NULL, *bv = NULL, *y = NULL;
  AD_TRY_GOTO(st, ad_to_dtype(&ac, a, ct), done);
  AD_TRY_GOTO(st, ad_to_dtype(&bc, b, ct), done);
  AD_TRY_GOTO(st, expand_view(&av, ac, nd, shape), done);
  AD_TRY_GOTO(st, expand_view(&bv, bc, nd, shape), done);
  AD_TRY_GOTO(st, ad_empty(&y, nd, shape, bool_out ? AD_BOOL : ct, ad_tensor_device(a)), done);
  AD_TRY_GOTO(st, k->binary(y, av, bv, op), done);
  ad_tensor *ins[2] = {ac, bc};
  if (!bool_out && ad_needs_record(ins, 2)) {
    bool save = op != AD_BIN_ADD && op != AD_BIN_SUB;
    AD_TRY_GOTO(st, ad_record(&BINARY_DEFS[op], &y, 1, ins, 2, ins, save ? 2 : 0, &op, sizeof op), done);
  }
  *out = y;
  y = NULL;
done:
  ad_tensor_release(y);
  ad_tensor_release(av);
  ad_tensor_release(bv);
  ad_tensor_release(ac);
  ad_tensor_release(bc);
  return st;
}

ad_status ad_add(ad_tensor **out, const ad_tensor *a, const ad_tensor *b) { return ad_binary(out, a, b, AD_BIN_ADD); }
ad_status ad_sub(ad_tensor **out, const ad_tensor *a, const ad_tensor *b) { return ad_binary(out, a, b, AD_BIN_SUB); }
ad_status ad_mul(ad_tensor **out, const ad_tensor *a, const ad_tensor *b) { return ad_binary(out, a, b, AD_BIN_MUL); }
ad_status ad_div(ad_tensor **out, const ad_tensor *a, const ad_tensor *b) { return ad_binary(out, a, b, AD_BIN_DIV); }

/* ------------------------------------------------------------------------ */
/* tensor op scalar                                                           */

typedef struct {
  ad_binop op;
  double s;
  bool scalar_first;
} scalar_attrs;

static ad_status binary_scalar_backward(ad_node *node, ad_tensor *const *go, ad_tensor **gi) {
  gi[0] = NULL;
  const ad_tensor *dy = go[0];
  if (!node->needs_grad[0] || !dy) return AD_OK;
  const scalar_attrs *at = node->attrs;
  switch (at->op) {
  case AD_BIN_ADD: return retained(&gi[0], dy);
  case AD_BIN_SUB: return at->scalar_first ? ad_unary(&gi[0], dy, AD_UN_NEG) : retained(&gi[0], dy);
  case AD_BIN_MUL: return ad_binary_scalar(&gi[0], dy, at->s, AD_BIN_MUL, false);
  case AD_BIN_DIV:
    if (!at->scalar_first) return ad_binary_scalar(&gi[0], dy, at->s, AD_BIN_DIV, false);
    break;
  default: break;
  }
  const struct ad_elementwise_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(ew_kernels(&k, &bk, dy));
  EW_NEED(k, bk, binary_scalar_bwd, ad_binop_name(at->op));
  ad_tensor *dx = NULL;
  AD_TRY(ad_empty(&dx, dy->ndim, dy->shape, dy->dtype, ad_tensor_device(dy)));
  ad_status st = k->binary_scalar_bwd(dx, node->saved[0], at->s, dy, at->op, at->scalar_first);
  if (st != AD_OK) {
    ad_tensor_release(dx);
    return st;
  }
  gi[0] = dx;
  return AD_OK;
}

static const ad_opdef BINARY_SCALAR_DEFS[AD_BIN_MINIMUM + 1] = {
    {"add", binary_scalar_backward}, {"sub", binary_scalar_backward},     {"mul", binary_scalar_backward},
    {"div", binary_scalar_backward}, {"pow", binary_scalar_backward},     {"maximum", binary_scalar_backward},
    {"minimum", binary_scalar_backward}};

ad_status ad_binary_scalar(ad_tensor **out, const ad_tensor *a, double s, ad_binop op, bool scalar_first) {
  if ((unsigned)op >= AD_BIN_COUNT) return AD_FAIL(AD_EINVAL, "binary: unknown op %d", (int)op);
  const char *name = ad_binop_name(op);
  if (!a) return AD_FAIL(AD_EINVAL, "%s: input is NULL", name);
  const struct ad_elementwise_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(ew_kernels(&k, &bk, a));
  EW_NEED(k, bk, binary_scalar, name);
  const bool bool_out = ad_binop_is_bool(op);
  ad_dtype ct = a->dtype;
  if (!bool_out && !ad_dtype_is_float(ct)) {
    /* an integer (or bool) tensor meets a non-integral scalar, a true
     * division, or a negative integer power: the result is f32 */
    if (!is_integral(s) || op == AD_BIN_DIV || (op == AD_BIN_POW && !scalar_first && s < 0)) ct = AD_F32;
    else if (ct == AD_BOOL) ct = AD_I64; /* bool arithmetic counts, as PyTorch's true + 1 == 2 */
  }
  ad_status st = AD_OK;
  ad_tensor *ac = NULL, *y = NULL;
  AD_TRY_GOTO(st, ad_to_dtype(&ac, a, ct), done);
  AD_TRY_GOTO(st, ad_empty(&y, ac->ndim, ac->shape, bool_out ? AD_BOOL : ct, ad_tensor_device(ac)), done);
  AD_TRY_GOTO(st, k->binary_scalar(y, ac, s, op, scalar_first), done);
  if (!bool_out && ad_needs_record(&ac, 1)) {
    scalar_attrs at = {op, s, scalar_first};
    bool save = op == AD_BIN_POW || op == AD_BIN_MAXIMUM || op == AD_BIN_MINIMUM ||
                (op == AD_BIN_DIV && scalar_first);
    AD_TRY_GOTO(st, ad_record(&BINARY_SCALAR_DEFS[op], &y, 1, &ac, 1, &ac, save ? 1 : 0, &at, sizeof at), done);
  }
  *out = y;
  y = NULL;
done:
  ad_tensor_release(y);
  ad_tensor_release(ac);
  return st;
}

ad_status ad_add_scaled(ad_tensor **out, const ad_tensor *a, const ad_tensor *b, double alpha) {
  if (alpha == 1.0) return ad_add(out, a, b);
  if (alpha == -1.0) return ad_sub(out, a, b);
  if (!b) return AD_FAIL(AD_EINVAL, "add: input is NULL");
  ad_tensor *t = NULL;
  AD_TRY(ad_binary_scalar(&t, b, alpha, AD_BIN_MUL, false));
  ad_status st = ad_add(out, a, t);
  ad_tensor_release(t);
  return st;
}

/* ------------------------------------------------------------------------ */
/* clamp                                                                      */

typedef struct {
  bool has_min, has_max;
  double min, max;
} clamp_attrs;

static ad_status clamp_backward(ad_node *node, ad_tensor *const *go, ad_tensor **gi) {
  gi[0] = NULL;
  const ad_tensor *dy = go[0];
  if (!node->needs_grad[0] || !dy) return AD_OK;
  const clamp_attrs *at = node->attrs;
  const struct ad_elementwise_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(ew_kernels(&k, &bk, dy));
  EW_NEED(k, bk, clamp_bwd, "clamp");
  ad_tensor *dx = NULL;
  AD_TRY(ad_empty(&dx, dy->ndim, dy->shape, dy->dtype, ad_tensor_device(dy)));
  ad_status st = k->clamp_bwd(dx, node->saved[0], dy, at->has_min, at->min, at->has_max, at->max);
  if (st != AD_OK) {
    ad_tensor_release(dx);
    return st;
  }
  gi[0] = dx;
  return AD_OK;
}

static const ad_opdef CLAMP_DEF = {"clamp", clamp_backward};

ad_status ad_clamp(ad_tensor **out, const ad_tensor *x, bool has_min, double min, bool has_max, double max) {
  if (!x) return AD_FAIL(AD_EINVAL, "clamp: input is NULL");
  if (!has_min && !has_max) return AD_FAIL(AD_EINVAL, "clamp: at least one of min and max must be given");
  const struct ad_elementwise_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(ew_kernels(&k, &bk, x));
  EW_NEED(k, bk, clamp, "clamp");
  ad_dtype ct = x->dtype;
  if (!ad_dtype_is_float(ct) && ((has_min && !is_integral(min)) || (has_max && !is_integral(max)))) ct = AD_F32;
  ad_status st = AD_OK;
  ad_tensor *xc = NULL, *y = NULL;
  AD_TRY_GOTO(st, ad_to_dtype(&xc, x, ct), done);
  AD_TRY_GOTO(st, ad_empty(&y, xc->ndim, xc->shape, ct, ad_tensor_device(xc)), done);
  AD_TRY_GOTO(st, k->clamp(y, xc, has_min, min, has_max, max), done);
  if (ad_needs_record(&xc, 1)) {
    clamp_attrs at = {has_min, has_max, has_min ? min : 0, has_max ? max : 0};
    AD_TRY_GOTO(st, ad_record(&CLAMP_DEF, &y, 1, &xc, 1, &xc, 1, &at, sizeof at), done);
  }
  *out = y;
  y = NULL;
done:
  ad_tensor_release(y);
  ad_tensor_release(xc);
  return st;
}

/* ------------------------------------------------------------------------ */
/* where                                                                      */

static ad_status where_backward(ad_node *node, ad_tensor *const *go, ad_tensor **gi) {
  gi[0] = gi[1] = NULL;
  const ad_tensor *dy = go[0];
  if (!dy) return AD_OK;
  const struct ad_elementwise_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(ew_kernels(&k, &bk, dy));
  EW_NEED(k, bk, where, "where");
  ad_status st = AD_OK;
  ad_device dev = ad_tensor_device(dy);
  ad_tensor *cv = NULL, *zero = NULL, *zv = NULL, *da = NULL, *db = NULL;
  AD_TRY_GOTO(st, expand_view(&cv, node->saved[0], dy->ndim, dy->shape), done);
  AD_TRY_GOTO(st, ad_scalar_tensor(&zero, 0.0, dy->dtype, dev), done);
  AD_TRY_GOTO(st, expand_view(&zv, zero, dy->ndim, dy->shape), done);
  if (node->needs_grad[0]) {
    AD_TRY_GOTO(st, ad_empty(&da, dy->ndim, dy->shape, dy->dtype, dev), done);
    AD_TRY_GOTO(st, k->where(da, cv, dy, zv), done);
  }
  if (node->needs_grad[1]) {
    AD_TRY_GOTO(st, ad_empty(&db, dy->ndim, dy->shape, dy->dtype, dev), done);
    AD_TRY_GOTO(st, k->where(db, cv, zv, dy), done);
  }
  gi[0] = da;
  gi[1] = db;
  da = db = NULL;
done:
  ad_tensor_release(cv);
  ad_tensor_release(zero);
  ad_tensor_release(zv);
  ad_tensor_release(da);
  ad_tensor_release(db);
  return st;
}

static const ad_opdef WHERE_DEF = {"where", where_backward};

ad_status ad_where(ad_tensor **out, const ad_tensor *cond, const ad_tensor *a, const ad_tensor *b) {
  if (!cond || !a || !b) return AD_FAIL(AD_EINVAL, "where: input is NULL");
  AD_TRY(same_device("where", cond, a));
  AD_TRY(same_device("where", a, b));
  const struct ad_elementwise_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(ew_kernels(&k, &bk, a));
  EW_NEED(k, bk, where, "where");
  int nd1, nd;
  int64_t s1[AD_MAX_DIMS], shape[AD_MAX_DIMS];
  AD_TRY(ad_broadcast_shapes(&nd1, s1, a->ndim, a->shape, b->ndim, b->shape, "where"));
  AD_TRY(ad_broadcast_shapes(&nd, shape, cond->ndim, cond->shape, nd1, s1, "where"));
  ad_dtype ct = result_type(a, b);
  ad_status st = AD_OK;
  ad_tensor *cb = NULL, *ac = NULL, *bc = NULL, *cv = NULL, *av = NULL, *bv = NULL, *y = NULL;
  if (cond->dtype == AD_BOOL) retained(&cb, cond);
  else AD_TRY_GOTO(st, ad_binary_scalar(&cb, cond, 0.0, AD_BIN_NE, false), done);
  AD_TRY_GOTO(st, ad_to_dtype(&ac, a, ct), done);
  AD_TRY_GOTO(st, ad_to_dtype(&bc, b, ct), done);
  AD_TRY_GOTO(st, expand_view(&cv, cb, nd, shape), done);
  AD_TRY_GOTO(st, expand_view(&av, ac, nd, shape), done);
  AD_TRY_GOTO(st, expand_view(&bv, bc, nd, shape), done);
  AD_TRY_GOTO(st, ad_empty(&y, nd, shape, ct, ad_tensor_device(a)), done);
  AD_TRY_GOTO(st, k->where(y, cv, av, bv), done);
  ad_tensor *ins[2] = {ac, bc};
  if (ad_needs_record(ins, 2)) AD_TRY_GOTO(st, ad_record(&WHERE_DEF, &y, 1, ins, 2, &cb, 1, NULL, 0), done);
  *out = y;
  y = NULL;
done:
  ad_tensor_release(y);
  ad_tensor_release(cv);
  ad_tensor_release(av);
  ad_tensor_release(bv);
  ad_tensor_release(cb);
  ad_tensor_release(ac);
  ad_tensor_release(bc);
  return st;
}

/* ------------------------------------------------------------------------ */
/* in place, unrecorded (the engine's gradient accumulation, optimizers)      */

static ad_status check_inplace_dst(const char *name, const ad_tensor *dst) {
  for (int d = 0; d < dst->ndim; d++)
    if (dst->strides[d] == 0 && dst->shape[d] > 1)
      return AD_FAIL(AD_EINVAL, "%s: the destination is a broadcast view (stride 0 in dim %d)", name, d);
  return AD_OK;
}

ad_status ad_add_(ad_tensor *dst, const ad_tensor *src) {
  if (!dst || !src) return AD_FAIL(AD_EINVAL, "add_: input is NULL");
  AD_TRY(same_device("add_", dst, src));
  AD_TRY(check_inplace_dst("add_", dst));
  const struct ad_elementwise_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(ew_kernels(&k, &bk, dst));
  EW_NEED(k, bk, binary, "add_");
  bool fits = src->ndim <= dst->ndim;
  for (int d = 0; fits && d < src->ndim; d++) {
    int64_t s = src->shape[d], t = dst->shape[d + dst->ndim - src->ndim];
    fits = s == t || s == 1;
  }
  if (!fits) {
    char b1[128], b2[128];
    return AD_FAIL(AD_ESHAPE, "add_: cannot accumulate shape %s into shape %s",
                   ad_shape_str(src->ndim, src->shape, b1, sizeof b1),
                   ad_shape_str(dst->ndim, dst->shape, b2, sizeof b2));
  }
  bool prev = ad_set_grad_enabled(false);
  ad_status st = AD_OK;
  ad_tensor *sc = NULL, *sv = NULL;
  AD_TRY_GOTO(st, ad_to_dtype(&sc, src, dst->dtype), done);
  AD_TRY_GOTO(st, expand_view(&sv, sc, dst->ndim, dst->shape), done);
  AD_TRY_GOTO(st, k->binary(dst, dst, sv, AD_BIN_ADD), done);
done:
  ad_set_grad_enabled(prev);
  ad_tensor_release(sv);
  ad_tensor_release(sc);
  return st;
}

ad_status ad_mul_scalar_(ad_tensor *dst, double s) {
  if (!dst) return AD_FAIL(AD_EINVAL, "mul_: input is NULL");
  AD_TRY(check_inplace_dst("mul_", dst));
  const struct ad_elementwise_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(ew_kernels(&k, &bk, dst));
  EW_NEED(k, bk, binary_scalar, "mul_");
  return k->binary_scalar(dst, dst, s, AD_BIN_MUL, false);
}
