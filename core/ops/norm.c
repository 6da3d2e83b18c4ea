/* norm.c: the normalisation front ends (group_norm, batch_norm, layer_norm)
 * and their backward rules, which call the fused *_bwd kernels.
 *
 * The kernels compute in f32 or f64. f16/bf16 inputs are converted to f32
 * on the way in and the result back to the input's dtype on the way out, as
 * ADM's GroupNorm32 does (`super().forward(x.float()).type(x.dtype)`); the
 * conversions are recorded ops, so gradients flow through them. Weights and
 * biases are converted to the compute dtype the same way. Under autocast,
 * group_norm and layer_norm are f32-policy ops: f16/bf16 inputs are upcast
 * and the result stays f32 (see autocast.h); batch_norm, as in PyTorch, is
 * on neither list and returns the input's dtype. */
#include <math.h>
#include "../ad.h"
#include "../autocast.h"
#include "../backend_nn.h"

/* w/b given as a (C) vector for a per-channel affine map */
static ad_status check_channel_vec(const char *op, const char *arg, const ad_tensor *t, const ad_tensor *x, int64_t C) {
  if (!t) return AD_OK;
  AD_TRY(ad_nn_check_float(op, arg, t));
  AD_TRY(ad_nn_check_device(op, arg, x, t));
  if (t->ndim != 1 || t->shape[0] != C) {
    char a[128];
    return AD_FAIL(AD_ESHAPE, "%s: %s must have shape [%lld] (one value per channel), got %s", op, arg,
                   (long long)C, ad_shape_str(t->ndim, t->shape, a, sizeof a));
  }
  return AD_OK;
}

/* ======================================================================= group norm */

typedef struct { int64_t N, C, S, G; } gn_attrs;

static ad_status group_norm_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  const gn_attrs *a = node->attrs;
  ad_tensor *x = node->saved[0], *w = node->saved[1], *mean = node->saved[2], *rstd = node->saved[3];
  ad_tensor *dy = NULL, *dx = NULL, *dw = NULL, *db = NULL;
  const struct ad_nn_kernels *nn = NULL;
  const ad_backend *bk = NULL;
  ad_status st;
  AD_TRY(ad_nn_table(&nn, &bk, x));
  AD_NEED_KERNEL(nn->group_norm_bwd, "group_norm backward", bk);
  AD_TRY(ad_contiguous(&dy, gout[0]));
  int64_t cshape[1] = {a->C};
  if (node->needs_grad[0]) AD_TRY_GOTO(st, ad_empty_like(&dx, x), fail);
  if (node->needs_grad[1]) AD_TRY_GOTO(st, ad_empty(&dw, 1, cshape, x->dtype, x->storage->device), fail);
  if (node->needs_grad[2]) AD_TRY_GOTO(st, ad_empty(&db, 1, cshape, x->dtype, x->storage->device), fail);
  AD_TRY_GOTO(st, nn->group_norm_bwd(dx, dw, db, dy, x, mean, rstd, w, a->N, a->C, a->S, a->G), fail);
  ad_tensor_release(dy);
  gin[0] = dx;
  gin[1] = dw;
  gin[2] = db;
  return AD_OK;
fail:
  ad_tensor_release(dy);
  ad_tensor_release(dx);
  ad_tensor_release(dw);
  ad_tensor_release(db);
  return st;
}
static const ad_opdef GROUP_NORM = {"group_norm", group_norm_backward};

ad_status ad_group_norm(ad_tensor **out, const ad_tensor *x, int num_groups, const ad_tensor *w,
                        const ad_tensor *b, double eps) {
  static const char *op = "group_norm";
  if (ad_autocast_applies_f32((const ad_tensor *[]){x, w, b}, 3)) {   /* autocast (issue 3): runs in f32 */
    ad_tensor *c[3];
    ad_status st = ad_autocast_cast_f32(c, (const ad_tensor *[]){x, w, b}, 3);
    if (st == AD_OK) st = ad_group_norm(out, c[0], num_groups, c[1], c[2], eps);
    ad_autocast_release(c, 3);
    return st;
  }
  AD_TRY(ad_nn_check_float(op, "input", x));
  if (x->ndim < 2) {
    char s[128];
    return AD_FAIL(AD_ESHAPE, "%s: input must be (N, C, *) with at least 2 dims, got %s", op,
                   ad_shape_str(x->ndim, x->shape, s, sizeof s));
  }
  const int64_t N = x->shape[0], C = x->shape[1];
  if (num_groups <= 0 || C % num_groups != 0)
    return AD_FAIL(AD_EINVAL, "%s: num_groups must be positive and divide the %lld channels, got %d", op,
                   (long long)C, num_groups);
  if (!(eps >= 0)) return AD_FAIL(AD_EINVAL, "%s: eps must be >= 0, got %g", op, eps);
  AD_TRY(check_channel_vec(op, "weight", w, x, C));
  AD_TRY(check_channel_vec(op, "bias", b, x, C));

  ad_status st;
  if (ad_nn_is_half(x->dtype)) {
    ad_tensor *xf = NULL, *wf = NULL, *bf = NULL, *y = NULL;
    AD_TRY_GOTO(st, ad_to_dtype(&xf, x, AD_F32), half_done);
    if (w) AD_TRY_GOTO(st, ad_to_dtype(&wf, w, AD_F32), half_done);
    if (b) AD_TRY_GOTO(st, ad_to_dtype(&bf, b, AD_F32), half_done);
    AD_TRY_GOTO(st, ad_group_norm(&y, xf, num_groups, wf, bf, eps), half_done);
    st = ad_nn_back_to(out, y, x->dtype);
  half_done:
    ad_tensor_release(xf);
    ad_tensor_release(wf);
    ad_tensor_release(bf);
    return st;
  }

  const struct ad_nn_kernels *nn = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(ad_nn_table(&nn, &bk, x));
  AD_NEED_KERNEL(nn->group_norm_fwd, op, bk);
  const ad_dtype dt = x->dtype;
  int64_t S = 1;
  for (int d = 2; d < x->ndim; d++) S *= x->shape[d];
  ad_tensor *xc = NULL, *wc = NULL, *bc = NULL, *y = NULL, *mean = NULL, *rstd = NULL;
  int64_t sshape[2] = {N, num_groups};
  AD_TRY_GOTO(st, ad_contiguous(&xc, x), fail);
  AD_TRY_GOTO(st, ad_nn_prep(&wc, w, dt), fail);
  AD_TRY_GOTO(st, ad_nn_prep(&bc, b, dt), fail);
  AD_TRY_GOTO(st, ad_empty(&y, x->ndim, x->shape, dt, x->storage->device), fail);
  AD_TRY_GOTO(st, ad_empty(&mean, 2, sshape, AD_F64, x->storage->device), fail);
  AD_TRY_GOTO(st, ad_empty(&rstd, 2, sshape, AD_F64, x->storage->device), fail);
  AD_TRY_GOTO(st, nn->group_norm_fwd(y, mean, rstd, xc, wc, bc, N, C, S, num_groups, eps), fail);
  {
    gn_attrs a = {N, C, S, num_groups};
    ad_tensor *ins[3] = {xc, wc, bc}, *sv[4] = {xc, wc, mean, rstd};
    AD_TRY_GOTO(st, ad_record(&GROUP_NORM, &y, 1, ins, 3, sv, 4, &a, sizeof a), fail);
  }
  ad_tensor_release(xc);
  ad_tensor_release(wc);
  ad_tensor_release(bc);
  ad_tensor_release(mean);
  ad_tensor_release(rstd);
  *out = y;
  return AD_OK;
fail:
  ad_tensor_release(xc);
  ad_tensor_release(wc);
  ad_tensor_release(bc);
  ad_tensor_release(y);
  ad_tensor_release(mean);
  ad_tensor_release(rstd);
  return st;
}

/* ======================================================================= batch norm */

typedef struct { int64_t N, C, S; bool training; } bn_attrs;

static ad_status batch_norm_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  const bn_attrs *a = node->attrs;
  ad_tensor *x = node->saved[0], *w = node->saved[1], *mean = node->saved[2], *rstd = node->saved[3];
  ad_tensor *dy = NULL, *dx = NULL, *dw = NULL, *db = NULL;
  const struct ad_nn_kernels *nn = NULL;
  const ad_backend *bk = NULL;
  ad_status st;
  AD_TRY(ad_nn_table(&nn, &bk, x));
  AD_NEED_KERNEL(nn->batch_norm_bwd, "batch_norm backward", bk);
  AD_TRY(ad_contiguous(&dy, gout[0]));
  int64_t cshape[1] = {a->C};
  if (node->needs_grad[0]) AD_TRY_GOTO(st, ad_empty_like(&dx, x), fail);
  if (node->needs_grad[1]) AD_TRY_GOTO(st, ad_empty(&dw, 1, cshape, x->dtype, x->storage->device), fail);
  if (node->needs_grad[2]) AD_TRY_GOTO(st, ad_empty(&db, 1, cshape, x->dtype, x->storage->device), fail);
  AD_TRY_GOTO(st, nn->batch_norm_bwd(dx, dw, db, dy, x, mean, rstd, w, a->N, a->C, a->S, a->training), fail);
  ad_tensor_release(dy);
  gin[0] = dx;
  gin[1] = dw;
  gin[2] = db;
  return AD_OK;
fail:
  ad_tensor_release(dy);
  ad_tensor_release(dx);
  ad_tensor_release(dw);
  ad_tensor_release(db);
  return st;
}
static const ad_opdef BATCH_NORM = {"batch_norm", batch_norm_backward};

/* A running-stat buffer the kernel can update: the tensor itself when it is
 * contiguous in the compute dtype, otherwise a converted copy (*copied set:
 * the caller writes it back after the kernel). */
static ad_status running_buf(ad_tensor **out, bool *copied, ad_tensor *r, ad_dtype dt) {
  *copied = false;
  if (!r) { *out = NULL; return AD_OK; }
  if (r->dtype == dt && ad_is_contiguous(r)) { ad_tensor_retain(r); *out = r; return AD_OK; }
  ad_tensor *c = NULL;
  AD_TRY(ad_empty(&c, r->ndim, r->shape, dt, r->storage->device));
  ad_status st = ad_copy_(c, r);
  if (st != AD_OK) { ad_tensor_release(c); return st; }
  *copied = true;
  *out = c;
  return AD_OK;
}

ad_status ad_batch_norm(ad_tensor **out, const ad_tensor *x, ad_tensor *running_mean, ad_tensor *running_var,
                        const ad_tensor *w, const ad_tensor *b, bool training, double momentum, double eps) {
  static const char *op = "batch_norm";
  AD_TRY(ad_nn_check_float(op, "input", x));
  char s[128];
  if (x->ndim < 2)
    return AD_FAIL(AD_ESHAPE, "%s: input must be (N, C, *) with at least 2 dims, got %s", op,
                   ad_shape_str(x->ndim, x->shape, s, sizeof s));
  const int64_t N = x->shape[0], C = x->shape[1];
  int64_t S = 1;
  for (int d = 2; d < x->ndim; d++) S *= x->shape[d];
  AD_TRY(check_channel_vec(op, "running_mean", running_mean, x, C));
  AD_TRY(check_channel_vec(op, "running_var", running_var, x, C));
  AD_TRY(check_channel_vec(op, "weight", w, x, C));
  AD_TRY(check_channel_vec(op, "bias", b, x, C));
  if (!training && (!running_mean || !running_var))
    return AD_FAIL(AD_EINVAL, "%s: running_mean and running_var are required in evaluation mode (training=false)", op);
  if (training && N * S <= 1)
    return AD_FAIL(AD_EINVAL, "%s: expected more than 1 value per channel when training, got input of shape %s", op,
                   ad_shape_str(x->ndim, x->shape, s, sizeof s));
  if (!(eps >= 0)) return AD_FAIL(AD_EINVAL, "%s: eps must be >= 0, got %g", op, eps);
  if (!isfinite(momentum)) return AD_FAIL(AD_EINVAL, "%s: momentum must be a finite number", op);

  ad_status st;
  if (ad_nn_is_half(x->dtype)) {
    ad_tensor *xf = NULL, *wf = NULL, *bf = NULL, *y = NULL;
    AD_TRY_GOTO(st, ad_to_dtype(&xf, x, AD_F32), half_done);
    if (w) AD_TRY_GOTO(st, ad_to_dtype(&wf, w, AD_F32), half_done);
    if (b) AD_TRY_GOTO(st, ad_to_dtype(&bf, b, AD_F32), half_done);
    AD_TRY_GOTO(st, ad_batch_norm(&y, xf, running_mean, running_var, wf, bf, training, momentum, eps), half_done);
    st = ad_nn_back_to(out, y, x->dtype);
  half_done:
    ad_tensor_release(xf);
    ad_tensor_release(wf);
    ad_tensor_release(bf);
    return st;
  }

  const struct ad_nn_kernels *nn = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(ad_nn_table(&nn, &bk, x));
  AD_NEED_KERNEL(nn->batch_norm_fwd, op, bk);
  const ad_dtype dt = x->dtype;
  ad_tensor *xc = NULL, *wc = NULL, *bc = NULL, *y = NULL, *mean = NULL, *rstd = NULL, *rm = NULL, *rv = NULL;
  bool rm_copied = false, rv_copied = false;
  int64_t cshape[1] = {C};
  AD_TRY_GOTO(st, ad_contiguous(&xc, x), fail);
  AD_TRY_GOTO(st, ad_nn_prep(&wc, w, dt), fail);
  AD_TRY_GOTO(st, ad_nn_prep(&bc, b, dt), fail);
  AD_TRY_GOTO(st, running_buf(&rm, &rm_copied, running_mean, dt), fail);
  AD_TRY_GOTO(st, running_buf(&rv, &rv_copied, running_var, dt), fail);
  AD_TRY_GOTO(st, ad_empty(&y, x->ndim, x->shape, dt, x->storage->device), fail);
  AD_TRY_GOTO(st, ad_empty(&mean, 1, cshape, AD_F64, x->storage->device), fail);
  AD_TRY_GOTO(st, ad_empty(&rstd, 1, cshape, AD_F64, x->storage->device), fail);
  AD_TRY_GOTO(st, nn->batch_norm_fwd(y, mean, rstd, xc, wc, bc, rm, rv, N, C, S, training, momentum, eps), fail);
  if (training && rm_copied) AD_TRY_GOTO(st, ad_copy_(running_mean, rm), fail);
  if (training && rv_copied) AD_TRY_GOTO(st, ad_copy_(running_var, rv), fail);
  {
    bn_attrs a = {N, C, S, training};
    ad_tensor *ins[3] = {xc, wc, bc}, *sv[4] = {xc, wc, mean, rstd};
    AD_TRY_GOTO(st, ad_record(&BATCH_NORM, &y, 1, ins, 3, sv, 4, &a, sizeof a), fail);
  }
  ad_tensor_release(xc);
  ad_tensor_release(wc);
  ad_tensor_release(bc);
  ad_tensor_release(rm);
  ad_tensor_release(rv);
  ad_tensor_release(mean);
  ad_tensor_release(rstd);
  *out = y;
  return AD_OK;
fail:
  ad_tensor_release(xc);
  ad_tensor_release(wc);
  ad_tensor_release(bc);
  ad_tensor_release(rm);
  ad_tensor_release(rv);
  ad_tensor_release(y);
  ad_tensor_release(mean);
  ad_tensor_release(rstd);
  return st;
}

/* ======================================================================= layer norm */

typedef struct { int64_t M, D; int k; } ln_attrs;

static ad_status layer_norm_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  const ln_attrs *a = node->attrs;
  ad_tensor *x = node->saved[0], *w = node->saved[1], *mean = node->saved[2], *rstd = node->saved[3];
  ad_tensor *dy = NULL, *dx = NULL, *dw = NULL, *db = NULL;
  const struct ad_nn_kernels *nn = NULL;
  const ad_backend *bk = NULL;
  ad_status st;
  AD_TRY(ad_nn_table(&nn, &bk, x));
  AD_NEED_KERNEL(nn->layer_norm_bwd, "layer_norm backward", bk);
  AD_TRY(ad_contiguous(&dy, gout[0]));
  const int k = a->k;
  if (node->needs_grad[0]) AD_TRY_GOTO(st, ad_empty_like(&dx, x), fail);
  if (node->needs_grad[1])
    AD_TRY_GOTO(st, ad_empty(&dw, k, x->shape + (x->ndim - k), x->dtype, x->storage->device), fail);
  if (node->needs_grad[2])
    AD_TRY_GOTO(st, ad_empty(&db, k, x->shape + (x->ndim - k), x->dtype, x->storage->device), fail);
  AD_TRY_GOTO(st, nn->layer_norm_bwd(dx, dw, db, dy, x, mean, rstd, w, a->M, a->D), fail);
  ad_tensor_release(dy);
  gin[0] = dx;
  gin[1] = dw;
  gin[2] = db;
  return AD_OK;
fail:
  ad_tensor_release(dy);
  ad_tensor_release(dx);
  ad_tensor_release(dw);
  ad_tensor_release(db);
  return st;
}
static const ad_opdef LAYER_NORM = {"layer_norm", layer_norm_backward};

static ad_status check_norm_shape(const char *op, const char *arg, const ad_tensor *t, const ad_tensor *x, int k) {
  if (!t) return AD_OK;
  AD_TRY(ad_nn_check_float(op, arg, t));
  AD_TRY(ad_nn_check_device(op, arg, x, t));
  if (!ad_shape_eq(t->ndim, t->shape, k, x->shape + (x->ndim - k))) {
    char a[128], b[128];
    return AD_FAIL(AD_ESHAPE, "%s: %s must have the normalized shape %s, got %s", op, arg,
                   ad_shape_str(k, x->shape + (x->ndim - k), a, sizeof a), ad_shape_str(t->ndim, t->shape, b, sizeof b));
  }
  return AD_OK;
}

ad_status ad_layer_norm(ad_tensor **out, const ad_tensor *x, int n_norm_dims, const ad_tensor *w,
                        const ad_tensor *b, double eps) {
  static const char *op = "layer_norm";
  if (ad_autocast_applies_f32((const ad_tensor *[]){x, w, b}, 3)) {   /* autocast (issue 3): runs in f32 */
    ad_tensor *c[3];
    ad_status st = ad_autocast_cast_f32(c, (const ad_tensor *[]){x, w, b}, 3);
    if (st == AD_OK) st = ad_layer_norm(out, c[0], n_norm_dims, c[1], c[2], eps);
    ad_autocast_release(c, 3);
    return st;
  }
  AD_TRY(ad_nn_check_float(op, "input", x));
  if (n_norm_dims < 1 || n_norm_dims > x->ndim) {
    char s[128];
    return AD_FAIL(AD_EINVAL, "%s: cannot normalize over the last %d dims of an input of shape %s", op, n_norm_dims,
                   ad_shape_str(x->ndim, x->shape, s, sizeof s));
  }
  AD_TRY(check_norm_shape(op, "weight", w, x, n_norm_dims));
  AD_TRY(check_norm_shape(op, "bias", b, x, n_norm_dims));
  if (!(eps >= 0)) return AD_FAIL(AD_EINVAL, "%s: eps must be >= 0, got %g", op, eps);

  ad_status st;
  if (ad_nn_is_half(x->dtype)) {
    ad_tensor *xf = NULL, *wf = NULL, *bf = NULL, *y = NULL;
    AD_TRY_GOTO(st, ad_to_dtype(&xf, x, AD_F32), half_done);
    if (w) AD_TRY_GOTO(st, ad_to_dtype(&wf, w, AD_F32), half_done);
    if (b) AD_TRY_GOTO(st, ad_to_dtype(&bf, b, AD_F32), half_done);
    AD_TRY_GOTO(st, ad_layer_norm(&y, xf, n_norm_dims, wf, bf, eps), half_done);
    st = ad_nn_back_to(out, y, x->dtype);
  half_done:
    ad_tensor_release(xf);
    ad_tensor_release(wf);
    ad_tensor_release(bf);
    return st;
  }

  const struct ad_nn_kernels *nn = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(ad_nn_table(&nn, &bk, x));
  AD_NEED_KERNEL(nn->layer_norm_fwd, op, bk);
  const ad_dtype dt = x->dtype;
  int64_t M = 1, D = 1;
  for (int d = 0; d < x->ndim - n_norm_dims; d++) M *= x->shape[d];
  for (int d = x->ndim - n_norm_dims; d < x->ndim; d++) D *= x->shape[d];
  ad_tensor *xc = NULL, *wc = NULL, *bc = NULL, *y = NULL, *mean = NULL, *rstd = NULL;
  int64_t mshape[1] = {M};
  AD_TRY_GOTO(st, ad_contiguous(&xc, x), fail);
  AD_TRY_GOTO(st, ad_nn_prep(&wc, w, dt), fail);
  AD_TRY_GOTO(st, ad_nn_prep(&bc, b, dt), fail);
  AD_TRY_GOTO(st, ad_empty(&y, x->ndim, x->shape, dt, x->storage->device), fail);
  AD_TRY_GOTO(st, ad_empty(&mean, 1, mshape, AD_F64, x->storage->device), fail);
  AD_TRY_GOTO(st, ad_empty(&rstd, 1, mshape, AD_F64, x->storage->device), fail);
  AD_TRY_GOTO(st, nn->layer_norm_fwd(y, mean, rstd, xc, wc, bc, M, D, eps), fail);
  {
    ln_attrs a = {M, D, n_norm_dims};
    ad_tensor *ins[3] = {xc, wc, bc}, *sv[4] = {xc, wc, mean, rstd};
    AD_TRY_GOTO(st, ad_record(&LAYER_NORM, &y, 1, ins, 3, sv, 4, &a, sizeof a), fail);
  }
  ad_tensor_release(xc);
  ad_tensor_release(wc);
  ad_tensor_release(bc);
  ad_tensor_release(mean);
  ad_tensor_release(rstd);
  *out = y;
  return AD_OK;
fail:
  ad_tensor_release(xc);
  ad_tensor_release(wc);
  ad_tensor_release(bc);
  ad_tensor_release(y);
  ad_tensor_release(mean);
  ad_tensor_release(rstd);
  return st;
}
