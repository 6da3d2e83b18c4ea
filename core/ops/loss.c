/* loss.c: loss front ends and backward rules: mse_loss, l1_loss,
 * binary_cross_entropy_with_logits (pointwise, one kernel pair) and
 * cross_entropy, nll_loss (class losses over dim 1).
 *
 * Reductions: AD_REDUCE_NONE keeps the elementwise losses, MEAN and SUM give
 * a 0-d tensor. Inputs are promoted to one float dtype (f16/bf16 run in f32
 * and the loss is converted back). mse/l1 broadcast input and target, as
 * PyTorch does; BCE requires target to match the input's shape and
 * broadcasts weight and pos_weight to it. Broadcasting is a recorded
 * expand + contiguous, so the gradient is summed back to each operand's
 * shape by those ops.
 *
 * Class targets are 0-based integers (i64 or i32). A target equal to
 * ignore_index contributes nothing (PyTorch's semantics: with the default
 * -100, valid targets are never ignored); any other target outside [0, C) is
 * an error naming it. The class weight is a constant (no gradient).
 *
 * Under autocast every loss here is an f32-policy op: f16/bf16 inputs are
 * upcast and the loss is f32 (see autocast.h). */
#include <math.h>
#include <string.h>
#include "../ad.h"
#include "../autocast.h"
#include "../backend_nn.h"

static ad_status check_reduction(const char *op, ad_reduction r) {
  if (r != AD_REDUCE_NONE && r != AD_REDUCE_MEAN && r != AD_REDUCE_SUM)
    return AD_FAIL(AD_EINVAL, "%s: invalid reduction %d (expected none, mean or sum)", op, (int)r);
  return AD_OK;
}

/* new ref: t converted to dt, expanded to shape (when it differs) and contiguous */
static ad_status prep_to(ad_tensor **out, const ad_tensor *t, ad_dtype dt, int nd, const int64_t *shape) {
  if (!t) { *out = NULL; return AD_OK; }
  ad_tensor *c = NULL, *e = NULL;
  AD_TRY(ad_to_dtype(&c, t, dt));
  ad_status st = AD_OK;
  if (!ad_shape_eq(c->ndim, c->shape, nd, shape)) st = ad_expand(&e, c, nd, shape);
  else { e = c; ad_tensor_retain(e); }
  ad_tensor_release(c);
  if (st != AD_OK) return st;
  st = ad_contiguous(out, e);
  ad_tensor_release(e);
  return st;
}

/* ======================================================================= pointwise */

typedef struct { ad_pointwise_loss kind; ad_reduction r; } pw_attrs;

static ad_status pointwise_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  const pw_attrs *a = node->attrs;
  ad_tensor *x = node->saved[0], *t = node->saved[1], *w = node->saved[2], *pw = node->saved[3];
  ad_tensor *dy = NULL, *g[4] = {NULL, NULL, NULL, NULL};
  const struct ad_nn_kernels *nn = NULL;
  const ad_backend *bk = NULL;
  ad_status st;
  AD_TRY(ad_nn_table(&nn, &bk, x));
  AD_NEED_KERNEL(nn->pointwise_loss_bwd, "loss backward", bk);
  AD_TRY(ad_contiguous(&dy, gout[0]));
  for (int i = 0; i < 4; i++)
    if (node->needs_grad[i] && node->saved[i]) AD_TRY_GOTO(st, ad_empty_like(&g[i], x), fail);
  AD_TRY_GOTO(st, nn->pointwise_loss_bwd(g[0], g[1], g[2], g[3], dy, x, t, w, pw, a->kind, a->r), fail);
  ad_tensor_release(dy);
  for (int i = 0; i < 4; i++) gin[i] = g[i];
  return AD_OK;
fail:
  ad_tensor_release(dy);
  for (int i = 0; i < 4; i++) ad_tensor_release(g[i]);
  return st;
}
static const ad_opdef MSE_LOSS = {"mse_loss", pointwise_backward};
static const ad_opdef L1_LOSS = {"l1_loss", pointwise_backward};
static const ad_opdef BCE_LOGITS = {"binary_cross_entropy_with_logits", pointwise_backward};

static ad_status pointwise_loss(ad_tensor **out, ad_pointwise_loss kind, const ad_tensor *input,
                                const ad_tensor *target, const ad_tensor *weight, const ad_tensor *pos_weight,
                                ad_reduction r) {
  const char *op = kind == AD_LOSS_MSE ? "mse_loss" : kind == AD_LOSS_L1 ? "l1_loss" : "binary_cross_entropy_with_logits";
  const ad_opdef *def = kind == AD_LOSS_MSE ? &MSE_LOSS : kind == AD_LOSS_L1 ? &L1_LOSS : &BCE_LOGITS;
  if (ad_autocast_applies_f32((const ad_tensor *[]){input, target, weight, pos_weight}, 4)) {   /* autocast (issue 3) */
    ad_tensor *c[4];
    ad_status st = ad_autocast_cast_f32(c, (const ad_tensor *[]){input, target, weight, pos_weight}, 4);
    if (st == AD_OK) st = pointwise_loss(out, kind, c[0], c[1], c[2], c[3], r);
    ad_autocast_release(c, 4);
    return st;
  }
  char s1[128], s2[128];
  AD_TRY(check_reduction(op, r));
  AD_TRY(ad_nn_check_float(op, "input", input));
  AD_TRY(ad_nn_check_float(op, "target", target));
  AD_TRY(ad_nn_check_device(op, "target", input, target));
  if (weight) AD_TRY(ad_nn_check_float(op, "weight", weight));
  if (pos_weight) AD_TRY(ad_nn_check_float(op, "pos_weight", pos_weight));
  AD_TRY(ad_nn_check_device(op, "weight", input, weight));
  AD_TRY(ad_nn_check_device(op, "pos_weight", input, pos_weight));

  int nd = input->ndim;
  int64_t shape[AD_MAX_DIMS];
  memcpy(shape, input->shape, sizeof shape);
  if (kind == AD_LOSS_BCE_LOGITS) {
    if (!ad_shape_eq(target->ndim, target->shape, input->ndim, input->shape))
      return AD_FAIL(AD_ESHAPE, "%s: target size %s must be the same as input size %s", op,
                     ad_shape_str(target->ndim, target->shape, s1, sizeof s1),
                     ad_shape_str(input->ndim, input->shape, s2, sizeof s2));
    const ad_tensor *opt[2] = {weight, pos_weight};
    const char *names[2] = {"weight", "pos_weight"};
    for (int i = 0; i < 2; i++) {
      int n2;
      int64_t b[AD_MAX_DIMS];
      if (opt[i] && (opt[i]->ndim > nd ||
                     ad_broadcast_shapes(&n2, b, opt[i]->ndim, opt[i]->shape, nd, shape, op) != AD_OK ||
                     !ad_shape_eq(n2, b, nd, shape)))
        return AD_FAIL(AD_ESHAPE, "%s: %s of shape %s does not broadcast to the input's shape %s", op, names[i],
                       ad_shape_str(opt[i]->ndim, opt[i]->shape, s1, sizeof s1), ad_shape_str(nd, shape, s2, sizeof s2));
    }
  } else {
    if (ad_broadcast_shapes(&nd, shape, input->ndim, input->shape, target->ndim, target->shape, op) != AD_OK)
      return AD_FAIL(AD_ESHAPE, "%s: input of shape %s and target of shape %s do not broadcast", op,
                     ad_shape_str(input->ndim, input->shape, s1, sizeof s1),
                     ad_shape_str(target->ndim, target->shape, s2, sizeof s2));
  }

  ad_dtype dt = ad_dtype_promote(input->dtype, target->dtype);
  if (weight) dt = ad_dtype_promote(dt, weight->dtype);
  if (pos_weight) dt = ad_dtype_promote(dt, pos_weight->dtype);
  const ad_dtype out_dt = dt;
  if (ad_nn_is_half(dt)) dt = AD_F32;

  const struct ad_nn_kernels *nn = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(ad_nn_table(&nn, &bk, input));
  AD_NEED_KERNEL(nn->pointwise_loss_fwd, op, bk);
  ad_tensor *x = NULL, *t = NULL, *w = NULL, *pw = NULL, *y = NULL;
  ad_status st;
  AD_TRY_GOTO(st, prep_to(&x, input, dt, nd, shape), fail);
  AD_TRY_GOTO(st, prep_to(&t, target, dt, nd, shape), fail);
  AD_TRY_GOTO(st, prep_to(&w, weight, dt, nd, shape), fail);
  AD_TRY_GOTO(st, prep_to(&pw, pos_weight, dt, nd, shape), fail);
  if (r == AD_REDUCE_NONE) AD_TRY_GOTO(st, ad_empty(&y, nd, shape, dt, input->storage->device), fail);
  else AD_TRY_GOTO(st, ad_empty(&y, 0, NULL, dt, input->storage->device), fail);
  AD_TRY_GOTO(st, nn->pointwise_loss_fwd(y, x, t, w, pw, kind, r), fail);
  {
    pw_attrs a = {kind, r};
    ad_tensor *ins[4] = {x, t, w, pw};
    AD_TRY_GOTO(st, ad_record(def, &y, 1, ins, 4, ins, 4, &a, sizeof a), fail);
  }
  ad_tensor_release(x);
  ad_tensor_release(t);
  ad_tensor_release(w);
  ad_tensor_release(pw);
  if (out_dt != dt) return ad_nn_back_to(out, y, out_dt);
  *out = y;
  return AD_OK;
fail:
  ad_tensor_release(x);
  ad_tensor_release(t);
  ad_tensor_release(w);
  ad_tensor_release(pw);
  ad_tensor_release(y);
  return st;
}

ad_status ad_mse_loss(ad_tensor **out, const ad_tensor *input, const ad_tensor *target, ad_reduction r) {
  return pointwise_loss(out, AD_LOSS_MSE, input, target, NULL, NULL, r);
}
ad_status ad_l1_loss(ad_tensor **out, const ad_tensor *input, const ad_tensor *target, ad_reduction r) {
  return pointwise_loss(out, AD_LOSS_L1, input, target, NULL, NULL, r);
}
ad_status ad_binary_cross_entropy_with_logits(ad_tensor **out, const ad_tensor *logits, const ad_tensor *target,
                                              const ad_tensor *weight, const ad_tensor *pos_weight, ad_reduction r) {
  return pointwise_loss(out, AD_LOSS_BCE_LOGITS, logits, target, weight, pos_weight, r);
}

/* ======================================================================= class losses */

typedef struct { int64_t ignore_index; double eps; ad_reduction r; } cls_attrs;

/* Checks (N, C, d...) scores against an (N, d...) target, or (C) against a 0-d
 * target, and a (C) weight. */
static ad_status check_class_args(const char *op, const ad_tensor *x, const ad_tensor *target, const ad_tensor *weight,
                                  ad_reduction r) {
  char s1[128], s2[128];
  AD_TRY(check_reduction(op, r));
  AD_TRY(ad_nn_check_float(op, "input", x));
  AD_TRY(ad_nn_check_device(op, "target", x, target));
  AD_TRY(ad_nn_check_device(op, "weight", x, weight));
  if (target->dtype != AD_I64 && target->dtype != AD_I32)
    return AD_FAIL(AD_EDTYPE, "%s: target must be an integer tensor of class indices (i64 or i32), got %s", op,
                   ad_dtype_name(target->dtype));
  if (x->ndim < 1)
    return AD_FAIL(AD_ESHAPE, "%s: input must be (N, C) or (N, C, d1, ...) or (C), got a 0-d tensor", op);
  const int64_t C = x->ndim == 1 ? x->shape[0] : x->shape[1];
  if (C < 1) return AD_FAIL(AD_ESHAPE, "%s: input has no classes (C = 0)", op);
  bool ok;
  if (x->ndim == 1) ok = target->ndim == 0;
  else {
    ok = target->ndim == x->ndim - 1 && target->shape[0] == x->shape[0];
    for (int d = 2; ok && d < x->ndim; d++) ok = target->shape[d - 1] == x->shape[d];
  }
  if (!ok)
    return AD_FAIL(AD_ESHAPE, "%s: target of shape %s does not match input of shape %s (expected the input's shape without dim 2)",
                   op, ad_shape_str(target->ndim, target->shape, s1, sizeof s1), ad_shape_str(x->ndim, x->shape, s2, sizeof s2));
  if (weight) {
    AD_TRY(ad_nn_check_float(op, "weight", weight));
    if (weight->ndim != 1 || weight->shape[0] != C)
      return AD_FAIL(AD_ESHAPE, "%s: weight must have shape [%lld] (one value per class), got %s", op, (long long)C,
                     ad_shape_str(weight->ndim, weight->shape, s1, sizeof s1));
  }
  return AD_OK;
}

/* scores as (N, C, ...) (a 1-D (C) input becomes (1, C)) and target as (N, ...) */
static ad_status class_views(ad_tensor **xv, ad_tensor **tv, const ad_tensor *x, const ad_tensor *target) {
  if (x->ndim == 1) {
    int64_t xs[2] = {1, x->shape[0]}, ts[1] = {1};
    AD_TRY(ad_view(xv, x, 2, xs));
    ad_status st = ad_view(tv, target, 1, ts);
    if (st != AD_OK) { ad_tensor_release(*xv); *xv = NULL; }
    return st;
  }
  ad_tensor_retain((ad_tensor *)x);
  ad_tensor_retain((ad_tensor *)target);
  *xv = (ad_tensor *)x;
  *tv = (ad_tensor *)target;
  return AD_OK;
}

static ad_status cross_entropy_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  const cls_attrs *a = node->attrs;
  ad_tensor *x = node->saved[0], *t = node->saved[1], *w = node->saved[2], *lse = node->saved[3];
  ad_tensor *dy = NULL, *dx = NULL;
  const struct ad_nn_kernels *nn = NULL;
  const ad_backend *bk = NULL;
  ad_status st;
  AD_TRY(ad_nn_table(&nn, &bk, x));
  AD_NEED_KERNEL(nn->cross_entropy_bwd, "cross_entropy backward", bk);
  AD_TRY(ad_contiguous(&dy, gout[0]));
  AD_TRY_GOTO(st, ad_empty_like(&dx, x), fail);
  AD_TRY_GOTO(st, nn->cross_entropy_bwd(dx, dy, x, lse, t, w, a->ignore_index, a->eps, a->r), fail);
  ad_tensor_release(dy);
  gin[0] = dx;
  return AD_OK;
fail:
  ad_tensor_release(dy);
  ad_tensor_release(dx);
  return st;
}
static const ad_opdef CROSS_ENTROPY = {"cross_entropy", cross_entropy_backward};

static ad_status nll_loss_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  const cls_attrs *a = node->attrs;
  ad_tensor *x = node->saved[0], *t = node->saved[1], *w = node->saved[2];
  ad_tensor *dy = NULL, *dx = NULL;
  const struct ad_nn_kernels *nn = NULL;
  const ad_backend *bk = NULL;
  ad_status st;
  AD_TRY(ad_nn_table(&nn, &bk, x));
  AD_NEED_KERNEL(nn->nll_loss_bwd, "nll_loss backward", bk);
  AD_TRY(ad_contiguous(&dy, gout[0]));
  AD_TRY_GOTO(st, ad_empty_like(&dx, x), fail);
  AD_TRY_GOTO(st, nn->nll_loss_bwd(dx, dy, t, w, a->ignore_index, a->r), fail);
  ad_tensor_release(dy);
  gin[0] = dx;
  return AD_OK;
fail:
  ad_tensor_release(dy);
  ad_tensor_release(dx);
  return st;
}
static const ad_opdef NLL_LOSS = {"nll_loss", nll_loss_backward};

/* shared by cross_entropy (is_ce) and nll_loss */
static ad_status class_loss(ad_tensor **out, bool is_ce, const ad_tensor *input, const ad_tensor *target,
                            const ad_tensor *weight, int64_t ignore_index, double eps, ad_reduction r) {
  const char *op = is_ce ? "cross_entropy" : "nll_loss";
  /* the target holds class indices: never cast (a float one is the check's error) */
  if (ad_autocast_applies_f32((const ad_tensor *[]){input, weight}, 2)) {   /* autocast (issue 3) */
    ad_tensor *c[2];
    ad_status st = ad_autocast_cast_f32(c, (const ad_tensor *[]){input, weight}, 2);
    if (st == AD_OK) st = class_loss(out, is_ce, c[0], target, c[1], ignore_index, eps, r);
    ad_autocast_release(c, 2);
    return st;
  }
  AD_TRY(check_class_args(op, input, target, weight, r));
  if (!(eps >= 0.0 && eps <= 1.0))
    return AD_FAIL(AD_EINVAL, "%s: label_smoothing must be in [0, 1], got %g", op, eps);
  const ad_dtype out_dt = input->dtype, dt = ad_nn_is_half(input->dtype) ? AD_F32 : input->dtype;
  const struct ad_nn_kernels *nn = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(ad_nn_table(&nn, &bk, input));
  if (is_ce) AD_NEED_KERNEL(nn->cross_entropy_fwd, op, bk);
  else AD_NEED_KERNEL(nn->nll_loss_fwd, op, bk);
  ad_tensor *xv = NULL, *tv = NULL, *x = NULL, *t = NULL, *w = NULL, *lse = NULL, *y = NULL;
  ad_status st;
  AD_TRY_GOTO(st, class_views(&xv, &tv, input, target), fail);
  AD_TRY_GOTO(st, ad_nn_prep(&x, xv, dt), fail);
  AD_TRY_GOTO(st, ad_contiguous(&t, tv), fail);
  AD_TRY_GOTO(st, ad_nn_prep(&w, weight, dt), fail);
  if (r == AD_REDUCE_NONE) AD_TRY_GOTO(st, ad_empty(&y, target->ndim, target->shape, dt, input->storage->device), fail);
  else AD_TRY_GOTO(st, ad_empty(&y, 0, NULL, dt, input->storage->device), fail);
  if (is_ce) {
    AD_TRY_GOTO(st, ad_empty(&lse, t->ndim, t->shape, dt, input->storage->device), fail);
    AD_TRY_GOTO(st, nn->cross_entropy_fwd(y, lse, x, t, w, ignore_index, eps, r), fail);
  } else {
    AD_TRY_GOTO(st, nn->nll_loss_fwd(y, x, t, w, ignore_index, r), fail);
  }
  {
    cls_attrs a = {ignore_index, eps, r};
    ad_tensor *sv[4] = {x, t, w, lse};
    AD_TRY_GOTO(st, ad_record(is_ce ? &CROSS_ENTROPY : &NLL_LOSS, &y, 1, &x, 1, sv, 4, &a, sizeof a), fail);
  }
  ad_tensor_release(xv);
  ad_tensor_release(tv);
  ad_tensor_release(x);
  ad_tensor_release(t);
  ad_tensor_release(w);
  ad_tensor_release(lse);
  if (out_dt != dt) return ad_nn_back_to(out, y, out_dt);
  *out = y;
  return AD_OK;
fail:
  ad_tensor_release(xv);
  ad_tensor_release(tv);
  ad_tensor_release(x);
  ad_tensor_release(t);
  ad_tensor_release(w);
  ad_tensor_release(lse);
  ad_tensor_release(y);
  return st;
}

ad_status ad_cross_entropy(ad_tensor **out, const ad_tensor *logits, const ad_tensor *target,
                           const ad_tensor *weight, int64_t ignore_index, double label_smoothing, ad_reduction r) {
  return class_loss(out, true, logits, target, weight, ignore_index, label_smoothing, r);
}

ad_status ad_nll_loss(ad_tensor **out, const ad_tensor *logp, const ad_tensor *target,
                      const ad_tensor *weight, int64_t ignore_index, ad_reduction r) {
  return class_loss(out, false, logp, target, weight, ignore_index, 0.0, r);
}
