/* reduce.c: front ends and backward rules of the reduction family (ops.h,
 * "reductions"): sum, mean, var, std, prod, max/min (with indices), argmax,
 * norm, logsumexp, all, any, cumsum.
 *
 * The kernels see one layout, a contiguous (outer, r, inner) block; this file
 * maps any tensor and any set of dims onto it:
 *  - reducing every dim of a dense tensor (contiguous, or a permutation of
 *    contiguous such as a transpose) reads its storage as one flat run;
 *  - reduced dims consecutive in a contiguous tensor are one (outer, r, inner)
 *    call, with no copy;
 *  - several separate runs of reduced dims: ops that compose (sum, prod, max,
 *    min, all, any) reduce one run per pass; the others permute the reduced
 *    dims to the end and make the tensor contiguous.
 * The kernels take f32/f64; f16/bf16 are reduced in f32 and integers in f64
 * through recorded conversions, then converted to the result dtype
 * (PyTorch's: sum/prod/cumsum of integers give i64, max/min keep the dtype).
 *
 * Backward rules are written with core ops (broadcast against keepdim views
 * of the output gradient), except max/min along a dim and cumsum, which have
 * their own kernels. */
#include <math.h>
#include <string.h>

#include "ad.h"
#include "backend_elementwise.h"
#include "backend_reduce.h"

/* ------------------------------------------------------------------------ */
/* plans: which dims are reduced, and the shapes that follow                 */

typedef struct {
  int ndim;                          /* the input's */
  int64_t shape[AD_MAX_DIMS];
  bool red[AD_MAX_DIMS];
  bool keepdim;
  int64_t count;                     /* elements reduced into each output */
  int out_ndim;
  int64_t out_shape[AD_MAX_DIMS];
  int64_t keep_shape[AD_MAX_DIMS];   /* the input's shape with reduced dims set to 1 */
} rd_plan;

static ad_status plan_make(rd_plan *p, const char *name, const ad_tensor *x, int n_dims, const int *dims,
                           bool keepdim) {
  memset(p, 0, sizeof *p);
  p->ndim = x->ndim;
  p->keepdim = keepdim;
  for (int d = 0; d < x->ndim; d++) p->shape[d] = x->shape[d];
  if (n_dims < 0 || n_dims > AD_MAX_DIMS) return AD_FAIL(AD_EINVAL, "%s: bad number of dims %d", name, n_dims);
  if (n_dims > 0 && !dims) return AD_FAIL(AD_EINVAL, "%s: dims is NULL", name);
  if (n_dims == 0) {
    for (int d = 0; d < x->ndim; d++) p->red[d] = true;
  } else {
    for (int i = 0; i < n_dims; i++) {
      int d = dims[i];
      if (x->ndim == 0 && (d == 0 || d == -1)) continue; /* a 0-d tensor has one dim to reduce, as in PyTorch */
      if (d < 0 || d >= x->ndim)
        return AD_FAIL(AD_EINVAL, "%s: dim %d out of range for a %d-D tensor", name, d, x->ndim);
      if (p->red[d]) return AD_FAIL(AD_EINVAL, "%s: dim %d appears more than once", name, d);
      p->red[d] = true;
    }
  }
  p->count = 1;
  p->out_ndim = 0;
  for (int d = 0; d < x->ndim; d++) {
    p->keep_shape[d] = p->red[d] ? 1 : x->shape[d];
    if (p->red[d]) p->count *= x->shape[d];
    if (!p->red[d] || keepdim) p->out_shape[p->out_ndim++] = p->keep_shape[d];
  }
  return AD_OK;
}

static int plan_dims(const rd_plan *p, int *dims) {
  int n = 0;
  for (int d = 0; d < p->ndim; d++)
    if (p->red[d]) dims[n++] = d;
  return n;
}

/* Turn a fresh keepdim-shaped result into the output shape. t must be ours
 * alone (just allocated, not yet recorded): its header is rewritten. */
static void plan_shape_output(ad_tensor *t, const rd_plan *p) {
  if (p->keepdim) return;
  t->ndim = p->out_ndim;
  for (int d = 0; d < p->out_ndim; d++) t->shape[d] = p->out_shape[d];
  ad_contiguous_strides(t->ndim, t->shape, t->strides);
}

/* A view of t (output shaped, keepdim or not) with the input's rank: the
 * reduced dims get size `expanded ? input size : 1` and stride 0. The
 * result broadcasts against the input (keep) or has its shape (expanded). */
static ad_status plan_view(ad_tensor **out, const ad_tensor *t, const rd_plan *p, bool expanded) {
  int64_t shape[AD_MAX_DIMS], st[AD_MAX_DIMS];
  int k = 0;
  for (int d = 0; d < p->ndim; d++) {
    if (p->red[d]) {
      shape[d] = expanded ? p->shape[d] : 1;
      st[d] = 0;
      if (p->keepdim) k++;
    } else {
      shape[d] = p->shape[d];
      st[d] = t->strides[k++];
    }
  }
  if (t->ndim != k) return AD_FAIL(AD_ESHAPE, "reduce backward: gradient rank %d does not match", t->ndim);
  return ad_tensor_from_storage(out, t->storage, t->offset, p->ndim, shape, st, t->dtype);
}

/* ------------------------------------------------------------------------ */
/* computing a reduction (not recorded)                                       */

static ad_status rd_kernels(const struct ad_reduce_kernels **k, const ad_backend **bk, const ad_tensor *t) {
  const ad_backend *b = ad_backend_of(t);
  if (!b) return AD_EDEVICE;
  if (!b->reduce) return AD_FAIL(AD_ENOTIMPL, "reductions: no %s kernels", b->name);
  *k = b->reduce;
  if (bk) *bk = b;
  return AD_OK;
}

#define RD_NEED(k, bk, member, opname)                                                             \
  do {                                                                                             \
    if (!(k)->member) return AD_FAIL(AD_ENOTIMPL, "%s: no %s kernel (%s)", (opname), (bk)->name, #member); \
  } while (0)

/* a contiguous tensor with x's values; x itself when it is contiguous */
static ad_status contiguous_nograd(ad_tensor **out, const ad_tensor *x) {
  if (ad_is_contiguous(x)) {
    ad_tensor_retain((ad_tensor *)x);
    *out = (ad_tensor *)x;
    return AD_OK;
  }
  ad_tensor *c = NULL;
  AD_TRY(ad_empty(&c, x->ndim, x->shape, x->dtype, ad_tensor_device(x)));
  ad_status st = ad_copy_(c, x);
  if (st != AD_OK) {
    ad_tensor_release(c);
    return st;
  }
  *out = c;
  return AD_OK;
}

/* Do x's elements fill exactly numel consecutive slots from x->offset, in
 * some order? (contiguous, transposed, permuted) */
static bool is_dense(const ad_tensor *x) {
  int64_t sz[AD_MAX_DIMS], st[AD_MAX_DIMS];
  int n = 0;
  for (int d = 0; d < x->ndim; d++) {
    if (x->shape[d] == 0) return true;
    if (x->shape[d] == 1) continue;
    if (x->strides[d] <= 0) return false;
    /* insertion sort by stride, descending */
    int i = n++;
    while (i > 0 && st[i - 1] < x->strides[d]) {
      st[i] = st[i - 1];
      sz[i] = sz[i - 1];
      i--;
    }
    st[i] = x->strides[d];
    sz[i] = x->shape[d];
  }
  int64_t expect = 1;
  for (int i = n - 1; i >= 0; i--) {
    if (st[i] != expect) return false;
    expect *= sz[i];
  }
  return true;
}

static bool op_composes(ad_redop op) {
  return op == AD_RED_SUM || op == AD_RED_PROD || op == AD_RED_MAX || op == AD_RED_MIN || op == AD_RED_ALL ||
         op == AD_RED_ANY;
}

/* one kernel call: reduce dims [d0, d1] of the contiguous tensor x (rank n,
 * shape s) into a new tensor of shape s with those dims set to 1 */
static ad_status reduce_run(ad_tensor **out, const struct ad_reduce_kernels *k, const ad_tensor *x, int d0,
                            int d1, ad_redop op, double param) {
  int64_t outer = 1, r = 1, inner = 1, shape[AD_MAX_DIMS];
  for (int d = 0; d < x->ndim; d++) {
    shape[d] = x->shape[d];
    if (d < d0) outer *= x->shape[d];
    else if (d <= d1) {
      r *= x->shape[d];
      shape[d] = 1;
    } else inner *= x->shape[d];
  }
  ad_tensor *y = NULL;
  AD_TRY(ad_empty(&y, x->ndim, shape, x->dtype, ad_tensor_device(x)));
  ad_status st = k->reduce(y, x, outer, r, inner, op, param);
  if (st != AD_OK) {
    ad_tensor_release(y);
    return st;
  }
  *out = y;
  return AD_OK;
}

/* The reduction of x (f32/f64, or bool for all/any; any strides) as a new
 * contiguous tensor of the plan's keep_shape. */
static ad_status reduce_compute(ad_tensor **out, const ad_tensor *x, const rd_plan *p, ad_redop op, double param) {
  const struct ad_reduce_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(rd_kernels(&k, &bk, x));
  RD_NEED(k, bk, reduce, "reduce");
  const ad_device dev = ad_tensor_device(x);
  const int64_t n = ad_numel(x);
  ad_status st = AD_OK;
  ad_tensor *xc = NULL, *cur = NULL, *nxt = NULL, *y = NULL;

  /* the dims that matter (size != 1), and the runs of reduced ones among them */
  int sig[AD_MAX_DIMS], nsig = 0, nruns = 0, run0 = -1, run1 = -1;
  bool all_reduced = true;
  for (int d = 0; d < x->ndim; d++) {
    if (x->shape[d] == 1) continue;
    if (p->red[d] && (nsig == 0 || !p->red[sig[nsig - 1]])) nruns++;
    if (!p->red[d]) all_reduced = false;
    sig[nsig++] = d;
  }

  if (all_reduced && is_dense(x)) {
    /* the storage span in whatever order: one flat run, no copy */
    int64_t len = n, one = 1;
    AD_TRY_GOTO(st, ad_tensor_from_storage(&xc, x->storage, x->offset, 1, &len, &one, x->dtype), done);
    AD_TRY_GOTO(st, ad_empty(&y, p->ndim, p->keep_shape, x->dtype, dev), done);
    AD_TRY_GOTO(st, k->reduce(y, xc, 1, n, 1, op, param), done);
    goto ok;
  }
  AD_TRY_GOTO(st, contiguous_nograd(&xc, x), done);
  if (nruns <= 1 || op_composes(op)) {
    /* one pass per run, last run first (earlier dims keep their positions) */
    ad_tensor_retain(xc);
    cur = xc;
    if (nruns == 0) { /* only size-1 dims reduced: r = 1 */
      AD_TRY_GOTO(st, reduce_run(&nxt, k, cur, x->ndim, x->ndim - 1, op, param), done);
      ad_tensor_release(cur);
      cur = nxt;
      nxt = NULL;
    }
    int i = nsig - 1;
    while (i >= 0) {
      if (!p->red[sig[i]]) {
        i--;
        continue;
      }
      run1 = sig[i];
      while (i >= 0 && p->red[sig[i]]) run0 = sig[i--];
      AD_TRY_GOTO(st, reduce_run(&nxt, k, cur, run0, run1, op, param), done);
      ad_tensor_release(cur);
      cur = nxt;
      nxt = NULL;
    }
    /* cur has keep_shape's layout (reduced dims are 1); give it that shape */
    AD_TRY_GOTO(st, ad_tensor_from_storage(&y, cur->storage, cur->offset, p->ndim, p->keep_shape, NULL, cur->dtype),
                done);
    goto ok;
  }
  {
    /* kept dims first, then the reduced ones, made contiguous: (outer, r, 1) */
    int64_t shape[AD_MAX_DIMS], strides[AD_MAX_DIMS], outer = 1;
    int m = 0;
    for (int d = 0; d < x->ndim; d++)
      if (!p->red[d]) {
        shape[m] = x->shape[d];
        strides[m++] = xc->strides[d];
        outer *= x->shape[d];
      }
    for (int d = 0; d < x->ndim; d++)
      if (p->red[d]) {
        shape[m] = x->shape[d];
        strides[m++] = xc->strides[d];
      }
    ad_tensor *perm = NULL;
    AD_TRY_GOTO(st, ad_tensor_from_storage(&perm, xc->storage, xc->offset, x->ndim, shape, strides, x->dtype), done);
    st = contiguous_nograd(&cur, perm);
    ad_tensor_release(perm);
    if (st != AD_OK) goto done;
    AD_TRY_GOTO(st, ad_empty(&y, p->ndim, p->keep_shape, x->dtype, dev), done);
    AD_TRY_GOTO(st, k->reduce(y, cur, outer, p->count, 1, op, param), done);
  }
ok:
  *out = y;
  y = NULL;
done:
  ad_tensor_release(y);
  ad_tensor_release(nxt);
  ad_tensor_release(cur);
  ad_tensor_release(xc);
  return st;
}

/* ------------------------------------------------------------------------ */
/* the common front end                                                       */

typedef enum {
  DT_SUMLIKE,   /* floats keep their dtype (f16/bf16 via f32); integers and bool -> i64 via f64 */
  DT_FLOAT,     /* floats only */
  DT_FLOAT_INT, /* floats keep their dtype; integers -> f32 */
  DT_KEEP,      /* every dtype keeps its dtype (computed in f32/f64) */
} dt_rule;

typedef enum { POST_NONE, POST_DIV_COUNT, POST_SQRT } post_op;

typedef struct {
  rd_plan p;
  int correction; /* var/std */
  double pnorm;   /* norm */
} rd_attrs;

typedef struct {
  const char *name;
  ad_redop op;
  dt_rule rule;
  post_op post;
  const ad_opdef *def; /* NULL: not recorded */
  bool save_x, save_y;
} rd_desc;

/* the dtype the kernel works in and the dtype of the result */
static ad_status rd_dtypes(const char *name, dt_rule rule, ad_dtype in, ad_dtype *work, ad_dtype *res) {
  if (in == AD_F32 || in == AD_F64) {
    *work = *res = in;
  } else if (in == AD_F16 || in == AD_BF16) {
    *work = AD_F32;
    *res = in;
  } else if (rule == DT_FLOAT) {
    return AD_FAIL(AD_EDTYPE, "%s: expected a floating-point tensor, got %s", name, ad_dtype_name(in));
  } else if (rule == DT_FLOAT_INT) {
    *work = *res = AD_F32;
  } else {
    *work = AD_F64;
    *res = rule == DT_SUMLIKE ? AD_I64 : in;
  }
  return AD_OK;
}

static ad_status rd_post(ad_tensor *y, post_op post, double count) {
  if (post == POST_NONE) return AD_OK;
  const ad_backend *bk = ad_backend_of(y);
  if (!bk) return AD_EDEVICE;
  const struct ad_elementwise_kernels *ek = bk->elementwise;
  if (post == POST_DIV_COUNT) {
    if (!ek || !ek->binary_scalar) return AD_FAIL(AD_ENOTIMPL, "mean: no %s kernel (binary_scalar)", bk->name);
    return ek->binary_scalar(y, y, count, AD_BIN_DIV, false);
  }
  if (!ek || !ek->unary) return AD_FAIL(AD_ENOTIMPL, "std: no %s kernel (unary)", bk->name);
  return ek->unary(y, y, AD_UN_SQRT);
}

static ad_status reduce_front(ad_tensor **out, const ad_tensor *x, int n_dims, const int *dims, bool keepdim,
                              const rd_desc *desc, double param, int correction) {
  if (!x) return AD_FAIL(AD_EINVAL, "%s: input is NULL", desc->name);
  rd_attrs at;
  memset(&at, 0, sizeof at);
  AD_TRY(plan_make(&at.p, desc->name, x, n_dims, dims, keepdim));
  at.correction = correction;
  at.pnorm = param;
  ad_dtype work = AD_F32, res = AD_F32;
  AD_TRY(rd_dtypes(desc->name, desc->rule, x->dtype, &work, &res));
  ad_status st = AD_OK;
  ad_tensor *xw = NULL, *y = NULL, *r = NULL;
  AD_TRY_GOTO(st, ad_to_dtype(&xw, x, work), done);
  AD_TRY_GOTO(st, reduce_compute(&y, xw, &at.p, desc->op, param), done);
  AD_TRY_GOTO(st, rd_post(y, desc->post, (double)at.p.count), done);
  plan_shape_output(y, &at.p);
  if (desc->def && ad_needs_record(&xw, 1)) {
    ad_tensor *saved[2] = {desc->save_x ? xw : NULL, desc->save_y ? y : NULL};
    AD_TRY_GOTO(st, ad_record(desc->def, &y, 1, &xw, 1, saved, 2, &at, sizeof at), done);
  }
  if (res != work) {
    AD_TRY_GOTO(st, ad_to_dtype(&r, y, res), done);
    ad_tensor_release(y);
    y = r;
    r = NULL;
  }
  *out = y;
  y = NULL;
done:
  ad_tensor_release(r);
  ad_tensor_release(y);
  ad_tensor_release(xw);
  return st;
}

/* ------------------------------------------------------------------------ */
/* sum, mean                                                                  */

static ad_status sum_backward(ad_node *node, ad_tensor *const *go, ad_tensor **gi) {
  gi[0] = NULL;
  if (!node->needs_grad[0] || !go[0]) return AD_OK;
  const rd_attrs *at = node->attrs;
  /* materialised rather than handed on as a stride-0 view: other ops'
   * backward kernels may assume a dense gradient */
  ad_tensor *v = NULL;
  AD_TRY(plan_view(&v, go[0], &at->p, true));
  ad_status st = contiguous_nograd(&gi[0], v);
  ad_tensor_release(v);
  return st;
}

static ad_status mean_backward(ad_node *node, ad_tensor *const *go, ad_tensor **gi) {
  gi[0] = NULL;
  if (!node->needs_grad[0] || !go[0]) return AD_OK;
  const rd_attrs *at = node->attrs;
  ad_tensor *v = NULL;
  AD_TRY(plan_view(&v, go[0], &at->p, true));
  ad_status st = ad_binary_scalar(&gi[0], v, (double)at->p.count, AD_BIN_DIV, false);
  ad_tensor_release(v);
  return st;
}

static const ad_opdef SUM_DEF = {"sum", sum_backward};
static const ad_opdef MEAN_DEF = {"mean", mean_backward};

ad_status ad_sum(ad_tensor **out, const ad_tensor *x, int n_dims, const int *dims, bool keepdim) {
  static const rd_desc d = {"sum", AD_RED_SUM, DT_SUMLIKE, POST_NONE, &SUM_DEF, false, false};
  return reduce_front(out, x, n_dims, dims, keepdim, &d, 0, 0);
}

ad_status ad_mean(ad_tensor **out, const ad_tensor *x, int n_dims, const int *dims, bool keepdim) {
  static const rd_desc d = {"mean", AD_RED_SUM, DT_FLOAT, POST_DIV_COUNT, &MEAN_DEF, false, false};
  return reduce_front(out, x, n_dims, dims, keepdim, &d, 0, 0);
}

/* ------------------------------------------------------------------------ */
/* var, std                                                                   */

/* dx = (x - mean) * g * 2 / (count - correction), g broadcast from the output */
static ad_status var_grad(ad_tensor **dx, const ad_tensor *x, const ad_tensor *g, const rd_attrs *at) {
  int dims[AD_MAX_DIMS];
  int nd = plan_dims(&at->p, dims);
  ad_status st = AD_OK;
  ad_tensor *m = NULL, *d = NULL, *gk = NULL, *t = NULL;
  AD_TRY_GOTO(st, ad_mean(&m, x, nd, dims, true), done);
  AD_TRY_GOTO(st, ad_sub(&d, x, m), done);
  AD_TRY_GOTO(st, plan_view(&gk, g, &at->p, false), done);
  AD_TRY_GOTO(st, ad_mul(&t, d, gk), done);
  AD_TRY_GOTO(st, ad_binary_scalar(dx, t, 2.0 / ((double)at->p.count - at->correction), AD_BIN_MUL, false), done);
done:
  ad_tensor_release(m);
  ad_tensor_release(d);
  ad_tensor_release(gk);
  ad_tensor_release(t);
  return st;
}

static ad_status var_backward(ad_node *node, ad_tensor *const *go, ad_tensor **gi) {
  gi[0] = NULL;
  if (!node->needs_grad[0] || !go[0]) return AD_OK;
  return var_grad(&gi[0], node->saved[0], go[0], node->attrs);
}

/* d std = d var / (2 std); 0 where std == 0 (PyTorch's choice) */
static ad_status std_backward(ad_node *node, ad_tensor *const *go, ad_tensor **gi) {
  gi[0] = NULL;
  if (!node->needs_grad[0] || !go[0]) return AD_OK;
  const ad_tensor *y = node->saved[1];
  ad_status st = AD_OK;
  ad_tensor *q = NULL, *h = NULL, *z = NULL, *zero = NULL, *g = NULL;
  AD_TRY_GOTO(st, ad_div(&q, go[0], y), done);
  AD_TRY_GOTO(st, ad_binary_scalar(&h, q, 0.5, AD_BIN_MUL, false), done);
  AD_TRY_GOTO(st, ad_binary_scalar(&z, y, 0.0, AD_BIN_EQ, false), done);
  AD_TRY_GOTO(st, ad_scalar_tensor(&zero, 0.0, h->dtype, ad_tensor_device(h)), done);
  AD_TRY_GOTO(st, ad_where(&g, z, zero, h), done);
  AD_TRY_GOTO(st, var_grad(&gi[0], node->saved[0], g, node->attrs), done);
done:
  ad_tensor_release(q);
  ad_tensor_release(h);
  ad_tensor_release(z);
  ad_tensor_release(zero);
  ad_tensor_release(g);
  return st;
}

static const ad_opdef VAR_DEF = {"var", var_backward};
static const ad_opdef STD_DEF = {"std", std_backward};

ad_status ad_var(ad_tensor **out, const ad_tensor *x, int n_dims, const int *dims, int correction, bool keepdim) {
  static const rd_desc d = {"var", AD_RED_VAR, DT_FLOAT, POST_NONE, &VAR_DEF, true, false};
  if (correction < 0) return AD_FAIL(AD_EINVAL, "var: correction must be >= 0, got %d", correction);
  return reduce_front(out, x, n_dims, dims, keepdim, &d, (double)correction, correction);
}

ad_status ad_std(ad_tensor **out, const ad_tensor *x, int n_dims, const int *dims, int correction, bool keepdim) {
  static const rd_desc d = {"std", AD_RED_VAR, DT_FLOAT, POST_SQRT, &STD_DEF, true, true};
  if (correction < 0) return AD_FAIL(AD_EINVAL, "std: correction must be >= 0, got %d", correction);
  return reduce_front(out, x, n_dims, dims, keepdim, &d, (double)correction, correction);
}

/* ------------------------------------------------------------------------ */
/* prod                                                                       */

/* d prod / d x_i = product of the others. With no zero in the slice that is
 * prod / x_i; with exactly one zero only that element gets a gradient (the
 * product of the nonzeros); with two or more every gradient is zero. */
static ad_status prod_backward(ad_node *node, ad_tensor *const *go, ad_tensor **gi) {
  gi[0] = NULL;
  if (!node->needs_grad[0] || !go[0]) return AD_OK;
  const ad_tensor *x = node->saved[0];
  const rd_attrs *at = node->attrs;
  int dims[AD_MAX_DIMS];
  int nd = plan_dims(&at->p, dims);
  ad_dtype dt = x->dtype;
  ad_device dev = ad_tensor_device(x);
  ad_status st = AD_OK;
  ad_tensor *zb = NULL, *zf = NULL, *nz = NULL, *one = NULL, *xs = NULL, *ps = NULL, *q = NULL, *gk = NULL,
            *term = NULL, *e0 = NULL, *e1 = NULL, *f0 = NULL, *f1 = NULL, *f1z = NULL, *fac = NULL;
  AD_TRY_GOTO(st, ad_binary_scalar(&zb, x, 0.0, AD_BIN_EQ, false), done);
  AD_TRY_GOTO(st, ad_to_dtype(&zf, zb, dt), done);
  AD_TRY_GOTO(st, ad_sum(&nz, zf, nd, dims, true), done);
  AD_TRY_GOTO(st, ad_scalar_tensor(&one, 1.0, dt, dev), done);
  AD_TRY_GOTO(st, ad_where(&xs, zb, one, x), done);
  AD_TRY_GOTO(st, ad_prod(&ps, xs, nd, dims, true), done);
  AD_TRY_GOTO(st, ad_div(&q, ps, xs), done);
  AD_TRY_GOTO(st, plan_view(&gk, go[0], &at->p, false), done);
  AD_TRY_GOTO(st, ad_mul(&term, q, gk), done);
  AD_TRY_GOTO(st, ad_binary_scalar(&e0, nz, 0.0, AD_BIN_EQ, false), done);
  AD_TRY_GOTO(st, ad_binary_scalar(&e1, nz, 1.0, AD_BIN_EQ, false), done);
  AD_TRY_GOTO(st, ad_to_dtype(&f0, e0, dt), done);
  AD_TRY_GOTO(st, ad_to_dtype(&f1, e1, dt), done);
  AD_TRY_GOTO(st, ad_mul(&f1z, f1, zf), done);
  AD_TRY_GOTO(st, ad_add(&fac, f0, f1z), done);
  AD_TRY_GOTO(st, ad_mul(&gi[0], term, fac), done);
done:
  ad_tensor_release(zb); ad_tensor_release(zf); ad_tensor_release(nz); ad_tensor_release(one);
  ad_tensor_release(xs); ad_tensor_release(ps); ad_tensor_release(q); ad_tensor_release(gk);
  ad_tensor_release(term); ad_tensor_release(e0); ad_tensor_release(e1); ad_tensor_release(f0);
  ad_tensor_release(f1); ad_tensor_release(f1z); ad_tensor_release(fac);
  return st;
}

static const ad_opdef PROD_DEF = {"prod", prod_backward};

ad_status ad_prod(ad_tensor **out, const ad_tensor *x, int n_dims, const int *dims, bool keepdim) {
  static const rd_desc d = {"prod", AD_RED_PROD, DT_SUMLIKE, POST_NONE, &PROD_DEF, true, false};
  return reduce_front(out, x, n_dims, dims, keepdim, &d, 0, 0);
}

/* ------------------------------------------------------------------------ */
/* norm                                                                       */

static ad_status norm_backward(ad_node *node, ad_tensor *const *go, ad_tensor **gi) {
  gi[0] = NULL;
  if (!node->needs_grad[0] || !go[0]) return AD_OK;
  const ad_tensor *x = node->saved[0], *y = node->saved[1], *dy = go[0];
  const rd_attrs *at = node->attrs;
  const double p = at->pnorm;
  ad_device dev = ad_tensor_device(x);
  if (p == 0) return ad_zeros(&gi[0], x->ndim, x->shape, x->dtype, dev);
  int dims[AD_MAX_DIMS];
  int nd = plan_dims(&at->p, dims);
  ad_status st = AD_OK;
  ad_tensor *sg = NULL, *ab = NULL, *yk = NULL, *mb = NULL, *mf = NULL, *cnt = NULL, *q = NULL, *qk = NULL,
            *t1 = NULL, *t2 = NULL, *yp = NULL, *z = NULL, *zero = NULL, *s = NULL, *w = NULL;
  if (p == 1) { /* sign(x) * dy */
    AD_TRY_GOTO(st, ad_unary(&sg, x, AD_UN_SIGN), done);
    AD_TRY_GOTO(st, plan_view(&qk, dy, &at->p, false), done);
    AD_TRY_GOTO(st, ad_mul(&gi[0], sg, qk), done);
  } else if (isinf(p)) { /* the extreme elements share dy, with their sign */
    AD_TRY_GOTO(st, ad_unary(&sg, x, AD_UN_SIGN), done);
    AD_TRY_GOTO(st, ad_unary(&ab, x, AD_UN_ABS), done);
    AD_TRY_GOTO(st, plan_view(&yk, y, &at->p, false), done);
    AD_TRY_GOTO(st, ad_binary(&mb, ab, yk, AD_BIN_EQ), done);
    AD_TRY_GOTO(st, ad_to_dtype(&mf, mb, x->dtype), done);
    AD_TRY_GOTO(st, ad_sum(&cnt, mf, nd, dims, true), done);
    AD_TRY_GOTO(st, plan_view(&qk, dy, &at->p, false), done);
    AD_TRY_GOTO(st, ad_div(&q, qk, cnt), done);
    AD_TRY_GOTO(st, ad_mul(&t1, sg, mf), done);
    AD_TRY_GOTO(st, ad_mul(&gi[0], t1, q), done);
  } else { /* x |x|^(p-2) * dy / y^(p-1), 0 where y == 0 */
    AD_TRY_GOTO(st, ad_scalar_tensor(&zero, 0.0, x->dtype, dev), done);
    AD_TRY_GOTO(st, ad_binary_scalar(&z, y, 0.0, AD_BIN_EQ, false), done);
    if (p == 2) {
      AD_TRY_GOTO(st, ad_div(&q, dy, y), done);
    } else {
      AD_TRY_GOTO(st, ad_binary_scalar(&yp, y, p - 1, AD_BIN_POW, false), done);
      AD_TRY_GOTO(st, ad_div(&q, dy, yp), done);
    }
    AD_TRY_GOTO(st, ad_where(&s, z, zero, q), done);
    AD_TRY_GOTO(st, plan_view(&qk, s, &at->p, false), done);
    if (p == 2) {
      AD_TRY_GOTO(st, ad_mul(&gi[0], x, qk), done);
    } else {
      AD_TRY_GOTO(st, ad_unary(&sg, x, AD_UN_SIGN), done);
      AD_TRY_GOTO(st, ad_unary(&ab, x, AD_UN_ABS), done);
      AD_TRY_GOTO(st, ad_binary_scalar(&t1, ab, p - 1, AD_BIN_POW, false), done);
      AD_TRY_GOTO(st, ad_mul(&t2, sg, t1), done);
      AD_TRY_GOTO(st, ad_mul(&w, t2, qk), done);
      gi[0] = w;
      w = NULL;
    }
  }
done:
  ad_tensor_release(sg); ad_tensor_release(ab); ad_tensor_release(yk); ad_tensor_release(mb);
  ad_tensor_release(mf); ad_tensor_release(cnt); ad_tensor_release(q); ad_tensor_release(qk);
  ad_tensor_release(t1); ad_tensor_release(t2); ad_tensor_release(yp); ad_tensor_release(z);
  ad_tensor_release(zero); ad_tensor_release(s); ad_tensor_release(w);
  return st;
}

static const ad_opdef NORM_DEF = {"norm", norm_backward};

ad_status ad_norm(ad_tensor **out, const ad_tensor *x, double p, int n_dims, const int *dims, bool keepdim) {
  rd_desc d = {"norm", AD_RED_NORMP, DT_FLOAT, POST_NONE, &NORM_DEF, true, true};
  if (p != p) return AD_FAIL(AD_EINVAL, "norm: p must be a number, got NaN");
  if (p == 2) d.op = AD_RED_NORM2;
  else if (p == 1) d.op = AD_RED_NORM1;
  else if (p == 0) d.op = AD_RED_NORM0;
  else if (p == INFINITY) d.op = AD_RED_NORMINF;
  else if (p == -INFINITY) d.op = AD_RED_NORMNEGINF;
  return reduce_front(out, x, n_dims, dims, keepdim, &d, p, 0);
}

/* ------------------------------------------------------------------------ */
/* logsumexp                                                                  */

/* dx = exp(x - y) * dy: the softmax over the reduced dims */
static ad_status logsumexp_backward(ad_node *node, ad_tensor *const *go, ad_tensor **gi) {
  gi[0] = NULL;
  if (!node->needs_grad[0] || !go[0]) return AD_OK;
  const rd_attrs *at = node->attrs;
  ad_status st = AD_OK;
  ad_tensor *yk = NULL, *d = NULL, *e = NULL, *gk = NULL;
  AD_TRY_GOTO(st, plan_view(&yk, node->saved[1], &at->p, false), done);
  AD_TRY_GOTO(st, ad_sub(&d, node->saved[0], yk), done);
  AD_TRY_GOTO(st, ad_unary(&e, d, AD_UN_EXP), done);
  AD_TRY_GOTO(st, plan_view(&gk, go[0], &at->p, false), done);
  AD_TRY_GOTO(st, ad_mul(&gi[0], e, gk), done);
done:
  ad_tensor_release(yk);
  ad_tensor_release(d);
  ad_tensor_release(e);
  ad_tensor_release(gk);
  return st;
}

static const ad_opdef LOGSUMEXP_DEF = {"logsumexp", logsumexp_backward};

ad_status ad_logsumexp(ad_tensor **out, const ad_tensor *x, int n_dims, const int *dims, bool keepdim) {
  static const rd_desc d = {"logsumexp", AD_RED_LOGSUMEXP, DT_FLOAT_INT, POST_NONE, &LOGSUMEXP_DEF, true, true};
  return reduce_front(out, x, n_dims, dims, keepdim, &d, 0, 0);
}

/* ------------------------------------------------------------------------ */
/* all, any                                                                   */

static ad_status bool_reduce(ad_tensor **out, const ad_tensor *x, int n_dims, const int *dims, bool keepdim,
                             const char *name, ad_redop op) {
  if (!x) return AD_FAIL(AD_EINVAL, "%s: input is NULL", name);
  rd_plan p;
  AD_TRY(plan_make(&p, name, x, n_dims, dims, keepdim));
  bool prev = ad_set_grad_enabled(false);
  ad_status st = AD_OK;
  ad_tensor *xb = NULL, *y = NULL;
  if (x->dtype == AD_BOOL) {
    ad_tensor_retain((ad_tensor *)x);
    xb = (ad_tensor *)x;
  } else {
    AD_TRY_GOTO(st, ad_binary_scalar(&xb, x, 0.0, AD_BIN_NE, false), done);
  }
  AD_TRY_GOTO(st, reduce_compute(&y, xb, &p, op, 0), done);
  plan_shape_output(y, &p);
  *out = y;
  y = NULL;
done:
  ad_set_grad_enabled(prev);
  ad_tensor_release(y);
  ad_tensor_release(xb);
  return st;
}

ad_status ad_all(ad_tensor **out, const ad_tensor *x, int n_dims, const int *dims, bool keepdim) {
  return bool_reduce(out, x, n_dims, dims, keepdim, "all", AD_RED_ALL);
}

ad_status ad_any(ad_tensor **out, const ad_tensor *x, int n_dims, const int *dims, bool keepdim) {
  return bool_reduce(out, x, n_dims, dims, keepdim, "any", AD_RED_ANY);
}

/* ------------------------------------------------------------------------ */
/* max/min over everything                                                    */

/* the extreme elements share the gradient equally (PyTorch's amax rule) */
static ad_status extreme_all_backward(ad_node *node, ad_tensor *const *go, ad_tensor **gi) {
  gi[0] = NULL;
  if (!node->needs_grad[0] || !go[0]) return AD_OK;
  const ad_tensor *x = node->saved[0], *y = node->saved[1];
  ad_status st = AD_OK;
  ad_tensor *mb = NULL, *mf = NULL, *cnt = NULL, *q = NULL;
  AD_TRY_GOTO(st, ad_binary(&mb, x, y, AD_BIN_EQ), done);
  AD_TRY_GOTO(st, ad_to_dtype(&mf, mb, x->dtype), done);
  AD_TRY_GOTO(st, ad_sum(&cnt, mf, 0, NULL, false), done);
  AD_TRY_GOTO(st, ad_div(&q, go[0], cnt), done);
  AD_TRY_GOTO(st, ad_mul(&gi[0], mf, q), done);
done:
  ad_tensor_release(mb);
  ad_tensor_release(mf);
  ad_tensor_release(cnt);
  ad_tensor_release(q);
  return st;
}

static const ad_opdef MAX_ALL_DEF = {"max", extreme_all_backward};
static const ad_opdef MIN_ALL_DEF = {"min", extreme_all_backward};

static ad_status extreme_all(ad_tensor **out, const ad_tensor *x, bool is_max) {
  const char *name = is_max ? "max" : "min";
  if (!x) return AD_FAIL(AD_EINVAL, "%s: input is NULL", name);
  if (ad_numel(x) == 0)
    return AD_FAIL(AD_EINVAL, "%s: cannot reduce an empty tensor (it has no identity); pass a dim", name);
  rd_desc d = {name, is_max ? AD_RED_MAX : AD_RED_MIN, DT_KEEP, POST_NONE, is_max ? &MAX_ALL_DEF : &MIN_ALL_DEF,
               true, true};
  return reduce_front(out, x, 0, NULL, false, &d, 0, 0);
}

ad_status ad_max_all(ad_tensor **out, const ad_tensor *x) { return extreme_all(out, x, true); }
ad_status ad_min_all(ad_tensor **out, const ad_tensor *x) { return extreme_all(out, x, false); }

/* ------------------------------------------------------------------------ */
/* max/min along a dim with indices; argmax/argmin                            */

typedef struct {
  int64_t outer, r, inner;
  int ndim;
  int64_t shape[AD_MAX_DIMS]; /* the input's */
} dim_attrs;

/* (outer, r, inner) of x around dim; dim < 0 or a 0-d x: everything is r */
static void dim_split(const ad_tensor *x, int dim, int64_t *outer, int64_t *r, int64_t *inner) {
  *outer = *inner = 1;
  *r = 1;
  for (int d = 0; d < x->ndim; d++) {
    if (dim < 0 || d == dim) *r *= x->shape[d];
    else if (d < dim) *outer *= x->shape[d];
    else *inner *= x->shape[d];
  }
}

static ad_status check_dim(const char *name, const ad_tensor *x, int dim, bool allow_flat) {
  if (allow_flat && dim < 0) return AD_OK;
  if (x->ndim == 0 && (dim == 0 || dim == -1)) return AD_OK;
  if (dim < 0 || dim >= x->ndim)
    return AD_FAIL(AD_EINVAL, "%s: dim %d out of range for a %d-D tensor", name, dim, x->ndim);
  return AD_OK;
}

/* result shapes for a reduction over dim (dim < 0: over all) */
static int dim_out_shape(const ad_tensor *x, int dim, bool keepdim, int64_t *shape) {
  int n = 0;
  for (int d = 0; d < x->ndim; d++) {
    bool red = dim < 0 || d == dim;
    if (!red) shape[n++] = x->shape[d];
    else if (keepdim) shape[n++] = 1;
  }
  return n;
}

static ad_status maxmin_dim_backward(ad_node *node, ad_tensor *const *go, ad_tensor **gi) {
  gi[0] = NULL;
  if (!node->needs_grad[0] || !go[0]) return AD_OK;
  const dim_attrs *at = node->attrs;
  const struct ad_reduce_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(rd_kernels(&k, &bk, go[0]));
  RD_NEED(k, bk, arg_reduce_bwd, "max/min");
  ad_status st = AD_OK;
  ad_tensor *gc = NULL, *dx = NULL;
  AD_TRY_GOTO(st, contiguous_nograd(&gc, go[0]), done);
  AD_TRY_GOTO(st, ad_empty(&dx, at->ndim, at->shape, gc->dtype, ad_tensor_device(gc)), done);
  AD_TRY_GOTO(st, k->arg_reduce_bwd(dx, gc, node->saved[0], at->outer, at->r, at->inner), done);
  gi[0] = dx;
  dx = NULL;
done:
  ad_tensor_release(gc);
  ad_tensor_release(dx);
  return st;
}

static const ad_opdef MAX_DIM_DEF = {"max", maxmin_dim_backward};
static const ad_opdef MIN_DIM_DEF = {"min", maxmin_dim_backward};

/* values may be NULL (argmax); dim < 0 only for argmax/argmin (flat) */
static ad_status extreme_dim(ad_tensor **values, ad_tensor **indices, const ad_tensor *x, int dim, bool keepdim,
                             bool is_max, const char *name) {
  if (!x) return AD_FAIL(AD_EINVAL, "%s: input is NULL", name);
  AD_TRY(check_dim(name, x, dim, values == NULL));
  int64_t outer, r, inner, shape[AD_MAX_DIMS];
  dim_split(x, dim, &outer, &r, &inner);
  if (r == 0) {
    if (dim < 0 || x->ndim == 0) return AD_FAIL(AD_EINVAL, "%s: cannot reduce an empty tensor", name);
    return AD_FAIL(AD_EINVAL, "%s: cannot reduce over dim %d of size 0", name, dim);
  }
  const struct ad_reduce_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(rd_kernels(&k, &bk, x));
  RD_NEED(k, bk, arg_reduce, name);
  int nd = dim_out_shape(x, dim, keepdim, shape);
  ad_dtype work = AD_F32, res = AD_F32;
  AD_TRY(rd_dtypes(name, DT_KEEP, x->dtype, &work, &res));
  ad_device dev = ad_tensor_device(x);
  bool prev = ad_grad_enabled();
  if (!values) ad_set_grad_enabled(false); /* argmax: nothing to record */
  ad_status st = AD_OK;
  ad_tensor *xw = NULL, *xc = NULL, *v = NULL, *idx = NULL, *vr = NULL;
  AD_TRY_GOTO(st, ad_to_dtype(&xw, x, work), done);
  AD_TRY_GOTO(st, contiguous_nograd(&xc, xw), done);
  if (values) AD_TRY_GOTO(st, ad_empty(&v, nd, shape, work, dev), done);
  AD_TRY_GOTO(st, ad_empty(&idx, nd, shape, AD_I64, dev), done);
  AD_TRY_GOTO(st, k->arg_reduce(v, idx, xc, outer, r, inner, is_max), done);
  if (values) {
    if (ad_needs_record(&xw, 1)) {
      dim_attrs at = {outer, r, inner, x->ndim, {0}};
      for (int d = 0; d < x->ndim; d++) at.shape[d] = x->shape[d];
      AD_TRY_GOTO(st, ad_record(is_max ? &MAX_DIM_DEF : &MIN_DIM_DEF, &v, 1, &xw, 1, &idx, 1, &at, sizeof at), done);
    }
    if (res != work) {
      AD_TRY_GOTO(st, ad_to_dtype(&vr, v, res), done);
      ad_tensor_release(v);
      v = vr;
      vr = NULL;
    }
    *values = v;
    v = NULL;
  }
  if (indices) {
    *indices = idx;
    idx = NULL;
  }
done:
  ad_set_grad_enabled(prev);
  ad_tensor_release(xw);
  ad_tensor_release(xc);
  ad_tensor_release(v);
  ad_tensor_release(idx);
  ad_tensor_release(vr);
  return st;
}

ad_status ad_max_dim(ad_tensor **values, ad_tensor **indices, const ad_tensor *x, int dim, bool keepdim) {
  if (!values) return AD_FAIL(AD_EINVAL, "max: values is NULL");
  return extreme_dim(values, indices, x, dim, keepdim, true, "max");
}

ad_status ad_min_dim(ad_tensor **values, ad_tensor **indices, const ad_tensor *x, int dim, bool keepdim) {
  if (!values) return AD_FAIL(AD_EINVAL, "min: values is NULL");
  return extreme_dim(values, indices, x, dim, keepdim, false, "min");
}

ad_status ad_argmax(ad_tensor **out, const ad_tensor *x, int dim, bool keepdim) {
  return extreme_dim(NULL, out, x, dim, keepdim, true, "argmax");
}

ad_status ad_argmin(ad_tensor **out, const ad_tensor *x, int dim, bool keepdim) {
  return extreme_dim(NULL, out, x, dim, keepdim, false, "argmin");
}

/* ------------------------------------------------------------------------ */
/* cumsum                                                                     */

static ad_status cumsum_backward(ad_node *node, ad_tensor *const *go, ad_tensor **gi) {
  gi[0] = NULL;
  if (!node->needs_grad[0] || !go[0]) return AD_OK;
  const dim_attrs *at = node->attrs;
  const struct ad_reduce_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(rd_kernels(&k, &bk, go[0]));
  RD_NEED(k, bk, cumsum, "cumsum");
  ad_status st = AD_OK;
  ad_tensor *gc = NULL, *dx = NULL;
  AD_TRY_GOTO(st, contiguous_nograd(&gc, go[0]), done);
  AD_TRY_GOTO(st, ad_empty(&dx, at->ndim, at->shape, gc->dtype, ad_tensor_device(gc)), done);
  AD_TRY_GOTO(st, k->cumsum(dx, gc, at->outer, at->r, at->inner, true), done);
  gi[0] = dx;
  dx = NULL;
done:
  ad_tensor_release(gc);
  ad_tensor_release(dx);
  return st;
}

static const ad_opdef CUMSUM_DEF = {"cumsum", cumsum_backward};

ad_status ad_cumsum(ad_tensor **out, const ad_tensor *x, int dim) {
  if (!x) return AD_FAIL(AD_EINVAL, "cumsum: input is NULL");
  AD_TRY(check_dim("cumsum", x, dim, false));
  const struct ad_reduce_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(rd_kernels(&k, &bk, x));
  RD_NEED(k, bk, cumsum, "cumsum");
  int64_t outer, r, inner;
  dim_split(x, x->ndim == 0 ? -1 : dim, &outer, &r, &inner);
  ad_dtype work = AD_F32, res = AD_F32;
  AD_TRY(rd_dtypes("cumsum", DT_SUMLIKE, x->dtype, &work, &res));
  ad_status st = AD_OK;
  ad_tensor *xw = NULL, *xc = NULL, *y = NULL, *yr = NULL;
  AD_TRY_GOTO(st, ad_to_dtype(&xw, x, work), done);
  AD_TRY_GOTO(st, contiguous_nograd(&xc, xw), done);
  AD_TRY_GOTO(st, ad_empty(&y, x->ndim, x->shape, work, ad_tensor_device(x)), done);
  AD_TRY_GOTO(st, k->cumsum(y, xc, outer, r, inner, false), done);
  if (ad_needs_record(&xw, 1)) {
    dim_attrs at = {outer, r, inner, x->ndim, {0}};
    for (int d = 0; d < x->ndim; d++) at.shape[d] = x->shape[d];
    AD_TRY_GOTO(st, ad_record(&CUMSUM_DEF, &y, 1, &xw, 1, NULL, 0, &at, sizeof at), done);
  }
  if (res != work) {
    AD_TRY_GOTO(st, ad_to_dtype(&yr, y, res), done);
    ad_tensor_release(y);
    y = yr;
    yr = NULL;
  }
  *out = y;
  y = NULL;
done:
  ad_tensor_release(xw);
  ad_tensor_release(xc);
  ad_tensor_release(y);
  ad_tensor_release(yr);
  return st;
}
