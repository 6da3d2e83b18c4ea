/* optim.c: front ends of the optimizer family (see backend_optim.h): fused
 * multi-tensor Adam/AdamW and SGD steps, EMA, and the global squared norm
 * that gradient clipping needs.
 *
 * These are in-place updates of leaves and optimizer state: never recorded,
 * whatever the grad mode. Every argument is checked before any kernel runs, so
 * a failed call leaves parameters and state untouched. */
#include <math.h>
#include "../ad.h"
#include "../backend_optim.h"

static bool is_float(ad_dtype d) { return d == AD_F32 || d == AD_F64 || d == AD_F16 || d == AD_BF16; }

/* the optimizer table of the device of xs[0] (CPU when n == 0) */
static ad_status optim_table(const struct ad_optim_kernels **out, const ad_backend **bk_out, const char *op,
                             ad_tensor *const *xs, int n) {
  const ad_backend *bk = ad_backend_for(n > 0 ? xs[0]->storage->device : AD_CPU);
  if (!bk) return ad_fail_context(AD_EDEVICE, "%s", op);
  if (!bk->optim) return AD_FAIL(AD_ENOTIMPL, "%s: no %s kernels for the optimizer family", op, bk->name);
  *out = bk->optim;
  *bk_out = bk;
  return AD_OK;
}

static ad_status check_list(const char *op, const char *what, ad_tensor *const *xs, int n, ad_device dev) {
  char b1[16], b2[16];
  for (int i = 0; i < n; i++) {
    const ad_tensor *t = xs[i];
    if (!t) return AD_FAIL(AD_EINVAL, "%s: %s[%d] is missing", op, what, i + 1);
    if (!is_float(t->dtype))
      return AD_FAIL(AD_EDTYPE, "%s: %s[%d] must be a floating-point tensor, got %s", op, what, i + 1,
                     ad_dtype_name(t->dtype));
    if (!ad_device_eq(t->storage->device, dev))
      return AD_FAIL(AD_EDEVICE, "%s: %s[%d] is on %s, expected %s (all tensors on one device)", op, what, i + 1,
                     ad_device_str(t->storage->device, b1, sizeof b1), ad_device_str(dev, b2, sizeof b2));
    if (!ad_is_contiguous(t))
      return AD_FAIL(AD_EINVAL, "%s: %s[%d] must be contiguous (it is updated in place)", op, what, i + 1);
  }
  return AD_OK;
}

static ad_status check_same_shape(const char *op, const char *what, int i, const ad_tensor *t, const ad_tensor *p) {
  if (!ad_shape_eq(t->ndim, t->shape, p->ndim, p->shape)) {
    char b1[96], b2[96];
    return AD_FAIL(AD_ESHAPE, "%s: %s[%d] has shape %s, the parameter has %s", op, what, i + 1,
                   ad_shape_str(t->ndim, t->shape, b1, sizeof b1), ad_shape_str(p->ndim, p->shape, b2, sizeof b2));
  }
  return AD_OK;
}

/* state of an f16/bf16 parameter is f32; of f32/f64 parameters, their dtype */
static ad_dtype state_dtype(ad_dtype p) { return p == AD_F64 ? AD_F64 : AD_F32; }

static ad_status check_state(const char *op, const char *what, ad_tensor *const *st, ad_tensor *const *params, int n) {
  for (int i = 0; i < n; i++) {
    AD_TRY(check_same_shape(op, what, i, st[i], params[i]));
    if (st[i]->dtype != state_dtype(params[i]->dtype))
      return AD_FAIL(AD_EDTYPE, "%s: %s[%d] must be %s for a %s parameter, got %s", op, what, i + 1,
                     ad_dtype_name(state_dtype(params[i]->dtype)), ad_dtype_name(params[i]->dtype),
                     ad_dtype_name(st[i]->dtype));
  }
  return AD_OK;
}

static ad_status check_grads(const char *op, ad_tensor *const *grads, ad_tensor *const *params, int n) {
  for (int i = 0; i < n; i++) {
    AD_TRY(check_same_shape(op, "grads", i, grads[i], params[i]));
    if (grads[i]->dtype != params[i]->dtype)
      return AD_FAIL(AD_EDTYPE, "%s: grads[%d] is %s, its parameter %s", op, i + 1, ad_dtype_name(grads[i]->dtype),
                     ad_dtype_name(params[i]->dtype));
  }
  return AD_OK;
}

static bool finite_nonneg(double x) { return isfinite(x) && x >= 0; }

ad_status ad_adam_step(ad_tensor *const *params, ad_tensor *const *grads, ad_tensor *const *exp_avg,
                       ad_tensor *const *exp_avg_sq, int n, const ad_adam_attrs *a) {
  const char *op = a && a->decoupled ? "adamw_step" : "adam_step";
  if (!a) return AD_FAIL(AD_EINVAL, "%s: missing attributes", op);
  if (n < 0) return AD_FAIL(AD_EINVAL, "%s: negative tensor count %d", op, n);
  if (!finite_nonneg(a->lr)) return AD_FAIL(AD_EINVAL, "%s: invalid learning rate %g", op, a->lr);
  if (!(a->beta1 >= 0 && a->beta1 < 1)) return AD_FAIL(AD_EINVAL, "%s: invalid beta1 %g (expected 0 <= beta1 < 1)", op, a->beta1);
  if (!(a->beta2 >= 0 && a->beta2 < 1)) return AD_FAIL(AD_EINVAL, "%s: invalid beta2 %g (expected 0 <= beta2 < 1)", op, a->beta2);
  if (!finite_nonneg(a->eps)) return AD_FAIL(AD_EINVAL, "%s: invalid eps %g", op, a->eps);
  if (!finite_nonneg(a->weight_decay)) return AD_FAIL(AD_EINVAL, "%s: invalid weight_decay %g", op, a->weight_decay);
  if (a->step < 1) return AD_FAIL(AD_EINVAL, "%s: step must be >= 1 (the count including this update), got %lld", op, (long long)a->step);
  if (!(a->grad_scale > 0) || !isfinite(a->grad_scale)) return AD_FAIL(AD_EINVAL, "%s: invalid grad_scale %g", op, a->grad_scale);
  if (n == 0) return AD_OK;
  ad_device dev = params[0] ? params[0]->storage->device : AD_CPU;
  AD_TRY(check_list(op, "params", params, n, dev));
  AD_TRY(check_list(op, "grads", grads, n, dev));
  AD_TRY(check_list(op, "exp_avg", exp_avg, n, dev));
  AD_TRY(check_list(op, "exp_avg_sq", exp_avg_sq, n, dev));
  AD_TRY(check_grads(op, grads, params, n));
  AD_TRY(check_state(op, "exp_avg", exp_avg, params, n));
  AD_TRY(check_state(op, "exp_avg_sq", exp_avg_sq, params, n));
  const struct ad_optim_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(optim_table(&k, &bk, op, params, n));
  AD_NEED_KERNEL(k->adam_step, op, bk);
  return k->adam_step(params, (const ad_tensor *const *)grads, exp_avg, exp_avg_sq, n, a);
}

ad_status ad_sgd_step(ad_tensor *const *params, ad_tensor *const *grads, ad_tensor *const *momentum_buf, int n,
                      const ad_sgd_attrs *a) {
  const char *op = "sgd_step";
  if (!a) return AD_FAIL(AD_EINVAL, "%s: missing attributes", op);
  if (n < 0) return AD_FAIL(AD_EINVAL, "%s: negative tensor count %d", op, n);
  if (!finite_nonneg(a->lr)) return AD_FAIL(AD_EINVAL, "%s: invalid learning rate %g", op, a->lr);
  if (!finite_nonneg(a->momentum)) return AD_FAIL(AD_EINVAL, "%s: invalid momentum %g", op, a->momentum);
  if (!isfinite(a->dampening)) return AD_FAIL(AD_EINVAL, "%s: invalid dampening %g", op, a->dampening);
  if (!finite_nonneg(a->weight_decay)) return AD_FAIL(AD_EINVAL, "%s: invalid weight_decay %g", op, a->weight_decay);
  if (a->nesterov && (a->momentum <= 0 || a->dampening != 0))
    return AD_FAIL(AD_EINVAL, "%s: nesterov momentum requires a momentum > 0 and zero dampening", op);
  if (!(a->grad_scale > 0) || !isfinite(a->grad_scale)) return AD_FAIL(AD_EINVAL, "%s: invalid grad_scale %g", op, a->grad_scale);
  if (n == 0) return AD_OK;
  ad_device dev = params[0] ? params[0]->storage->device : AD_CPU;
  AD_TRY(check_list(op, "params", params, n, dev));
  AD_TRY(check_list(op, "grads", grads, n, dev));
  AD_TRY(check_grads(op, grads, params, n));
  if (a->momentum != 0) {
    if (!momentum_buf) return AD_FAIL(AD_EINVAL, "%s: momentum buffers are required when momentum != 0", op);
    AD_TRY(check_list(op, "momentum_buffer", momentum_buf, n, dev));
    AD_TRY(check_state(op, "momentum_buffer", momentum_buf, params, n));
  }
  const struct ad_optim_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(optim_table(&k, &bk, op, params, n));
  AD_NEED_KERNEL(k->sgd_step, op, bk);
  return k->sgd_step(params, (const ad_tensor *const *)grads, a->momentum != 0 ? momentum_buf : NULL, n, a);
}

ad_status ad_ema_update(ad_tensor *const *ema, ad_tensor *const *src, int n, double decay) {
  const char *op = "ema_update";
  if (n < 0) return AD_FAIL(AD_EINVAL, "%s: negative tensor count %d", op, n);
  if (!(decay >= 0 && decay <= 1)) return AD_FAIL(AD_EINVAL, "%s: decay must be in [0, 1], got %g", op, decay);
  if (n == 0) return AD_OK;
  ad_device dev = ema[0] ? ema[0]->storage->device : AD_CPU;
  AD_TRY(check_list(op, "ema", ema, n, dev));
  AD_TRY(check_list(op, "params", src, n, dev));
  for (int i = 0; i < n; i++) AD_TRY(check_same_shape(op, "ema", i, ema[i], src[i]));
  const struct ad_optim_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(optim_table(&k, &bk, op, ema, n));
  AD_NEED_KERNEL(k->ema_update, op, bk);
  return k->ema_update(ema, (const ad_tensor *const *)src, n, decay);
}

ad_status ad_foreach_sq_norm(ad_tensor **out, ad_tensor *const *xs, int n) {
  const char *op = "foreach_sq_norm";
  if (n < 0) return AD_FAIL(AD_EINVAL, "%s: negative tensor count %d", op, n);
  ad_device dev = n > 0 && xs[0] ? xs[0]->storage->device : AD_CPU;
  AD_TRY(check_list(op, "tensors", xs, n, dev));
  const struct ad_optim_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(optim_table(&k, &bk, op, xs, n));
  AD_NEED_KERNEL(k->sq_norm, op, bk);
  ad_tensor *r = NULL;
  AD_TRY(ad_zeros(&r, 0, NULL, AD_F64, dev));
  ad_status st = k->sq_norm(r, (const ad_tensor *const *)xs, n);
  if (st != AD_OK) { ad_tensor_release(r); return st; }
  *out = r;
  return AD_OK;
}

ad_status ad_foreach_scale_(ad_tensor *const *xs, int n, double s) {
  const char *op = "foreach_scale_";
  if (n < 0) return AD_FAIL(AD_EINVAL, "%s: negative tensor count %d", op, n);
  if (n == 0) return AD_OK;
  ad_device dev = xs[0] ? xs[0]->storage->device : AD_CPU;
  AD_TRY(check_list(op, "tensors", xs, n, dev));
  const struct ad_optim_kernels *k = NULL;
  const ad_backend *bk = NULL;
  AD_TRY(optim_table(&k, &bk, op, xs, n));
  AD_NEED_KERNEL(k->scale, op, bk);
  return k->scale(xs, n, s);
}
