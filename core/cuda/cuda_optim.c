/* cuda_optim.c: the CUDA instance of the optimizer kernel table
 * (backend_optim.h). Lists of tensors become batches of at most ADK_MT_MAX
 * tensors passed to the multi-tensor kernels of kernels/cuda/optim.cu by
 * value: a whole model's AdamW step is one launch per parameter dtype (per
 * 192 tensors), with no host-device transfer and no synchronisation. */
#include <math.h>
#include <string.h>
#include "cuda_internal.h"
#include "../backend_optim.h"

static int64_t chunks_of(const ad_tensor *t) { return (ad_numel(t) + ADK_MT_CHUNK - 1) / ADK_MT_CHUNK; }

static void batch_reset(adk_mt_batch *b) {
  b->n = 0;
  b->chunk0[0] = 0;
}

static void batch_add(adk_mt_batch *b, const ad_tensor *a, const ad_tensor *bb, const ad_tensor *c,
                      const ad_tensor *d) {
  const int i = b->n++;
  b->a[i] = ad_data(a);
  b->b[i] = bb ? ad_data(bb) : NULL;
  b->c[i] = c ? ad_data(c) : NULL;
  b->d[i] = d ? ad_data(d) : NULL;
  b->numel[i] = ad_numel(a);
  b->dtype_a[i] = (signed char)a->dtype;
  b->dtype_b[i] = (signed char)(bb ? bb->dtype : a->dtype);
  b->chunk0[i + 1] = b->chunk0[i] + chunks_of(a);
}

static ad_status ctx_of(adk_ctx *k, ad_tensor *const *xs, int n) {
  int dev = 0;
  for (int i = 0; i < n; i++)
    if (xs[i]->storage->device.type == AD_DEV_CUDA) { dev = ad_cuda_dev_of(xs[i]); break; }
  return ad_cuda_kctx(k, NULL, dev);
}

static const ad_dtype PARAM_DTYPES[4] = {AD_F32, AD_F64, AD_F16, AD_BF16};

static ad_status cuda_adam_step(ad_tensor *const *params, const ad_tensor *const *grads, ad_tensor *const *exp_avg,
                                ad_tensor *const *exp_avg_sq, int n, const ad_adam_attrs *a) {
  if (n == 0) return AD_OK;
  adk_ctx k;
  AD_TRY(ctx_of(&k, params, n));
  adk_adam_args args = {
    .lr = a->lr, .beta1 = a->beta1, .beta2 = a->beta2, .eps = a->eps, .weight_decay = a->weight_decay,
    .bias_correction1 = 1.0 - pow(a->beta1, (double)a->step),
    .bias_correction2 = 1.0 - pow(a->beta2, (double)a->step),
    .grad_scale = a->grad_scale, .decoupled = a->decoupled, .maximize = a->maximize,
  };
  adk_mt_batch b;
  for (int t = 0; t < 4; t++) {
    batch_reset(&b);
    for (int i = 0; i < n; i++) {
      if (params[i]->dtype != PARAM_DTYPES[t] || ad_numel(params[i]) == 0) continue;
      batch_add(&b, params[i], grads[i], exp_avg[i], exp_avg_sq[i]);
      if (b.n == ADK_MT_MAX) {
        AD_TRY(ad_cuda_check(ad_launch_adam_step(&k, &b, PARAM_DTYPES[t], &args), "adam step"));
        batch_reset(&b);
      }
    }
    if (b.n) AD_TRY(ad_cuda_check(ad_launch_adam_step(&k, &b, PARAM_DTYPES[t], &args), "adam step"));
  }
  return AD_OK;
}

static ad_status cuda_sgd_step(ad_tensor *const *params, const ad_tensor *const *grads, ad_tensor *const *bufs, int n,
                               const ad_sgd_attrs *a) {
  if (n == 0) return AD_OK;
  if (a->momentum != 0 && !bufs) return AD_FAIL(AD_EINVAL, "sgd step: momentum needs momentum buffers");
  adk_ctx k;
  AD_TRY(ctx_of(&k, params, n));
  adk_sgd_args args = {.lr = a->lr, .momentum = a->momentum, .dampening = a->dampening,
                       .weight_decay = a->weight_decay, .grad_scale = a->grad_scale, .nesterov = a->nesterov,
                       .maximize = a->maximize, .first = a->first};
  adk_mt_batch b;
  for (int t = 0; t < 4; t++) {
    batch_reset(&b);
    for (int i = 0; i < n; i++) {
      if (params[i]->dtype != PARAM_DTYPES[t] || ad_numel(params[i]) == 0) continue;
      batch_add(&b, params[i], grads[i], bufs ? bufs[i] : NULL, NULL);
      if (b.n == ADK_MT_MAX) {
        AD_TRY(ad_cuda_check(ad_launch_sgd_step(&k, &b, PARAM_DTYPES[t], &args), "sgd step"));
        batch_reset(&b);
      }
    }
    if (b.n) AD_TRY(ad_cuda_check(ad_launch_sgd_step(&k, &b, PARAM_DTYPES[t], &args), "sgd step"));
  }
  return AD_OK;
}

static ad_status cuda_ema_update(ad_tensor *const *ema, const ad_tensor *const *src, int n, double decay) {
  if (n == 0) return AD_OK;
  adk_ctx k;
  AD_TRY(ctx_of(&k, ema, n));
  adk_mt_batch b;
  batch_reset(&b);
  for (int i = 0; i < n; i++) {
    if (ad_numel(ema[i]) == 0) continue;
    batch_add(&b, ema[i], src[i], NULL, NULL);
    if (b.n == ADK_MT_MAX) {
      AD_TRY(ad_cuda_check(ad_launch_ema_update(&k, &b, decay), "ema update"));
      batch_reset(&b);
    }
  }
  if (b.n) AD_TRY(ad_cuda_check(ad_launch_ema_update(&k, &b, decay), "ema update"));
  return AD_OK;
}

/* one double per chunk of every tensor, then one fixed-order sum into out */
static ad_status cuda_sq_norm(ad_tensor *out, const ad_tensor *const *xs, int n) {
  adk_ctx k;
  AD_TRY(ad_cuda_kctx(&k, NULL, ad_cuda_dev_of(out)));
  int64_t total = 0;
  for (int i = 0; i < n; i++) total += chunks_of(xs[i]);
  void *part = NULL;
  AD_TRY(ad_cuda_malloc(&part, (size_t)(total > 0 ? total : 1) * sizeof(double), k.device));
  ad_status st = AD_OK;
  adk_mt_batch b;
  batch_reset(&b);
  int64_t base = 0;   /* first chunk of the current batch in part[] */
  for (int i = 0; i < n && st == AD_OK; i++) {
    if (ad_numel(xs[i]) == 0) continue;
    batch_add(&b, xs[i], NULL, NULL, NULL);
    if (b.n == ADK_MT_MAX) {
      st = ad_cuda_check(ad_launch_sq_norm_chunks(&k, (double *)part + base, &b), "sq_norm");
      base += b.chunk0[b.n];
      batch_reset(&b);
    }
  }
  if (st == AD_OK && b.n) {
    st = ad_cuda_check(ad_launch_sq_norm_chunks(&k, (double *)part + base, &b), "sq_norm");
    base += b.chunk0[b.n];
  }
  if (st == AD_OK) st = ad_cuda_check(ad_launch_sum_doubles(&k, ad_data(out), part, base), "sq_norm");
  ad_cuda_free(part, 0, k.device);
  return st;
}

static ad_status cuda_scale(ad_tensor *const *xs, int n, double s) {
  if (n == 0) return AD_OK;
  adk_ctx k;
  AD_TRY(ctx_of(&k, xs, n));
  adk_mt_batch b;
  batch_reset(&b);
  for (int i = 0; i < n; i++) {
    if (ad_numel(xs[i]) == 0) continue;
    batch_add(&b, xs[i], NULL, NULL, NULL);
    if (b.n == ADK_MT_MAX) {
      AD_TRY(ad_cuda_check(ad_launch_scale(&k, &b, s), "scale"));
      batch_reset(&b);
    }
  }
  if (b.n) AD_TRY(ad_cuda_check(ad_launch_scale(&k, &b, s), "scale"));
  return AD_OK;
}

const struct ad_optim_kernels ad_cuda_optim_kernels = {
  .adam_step = cuda_adam_step,
  .sgd_step = cuda_sgd_step,
  .ema_update = cuda_ema_update,
  .sq_norm = cuda_sq_norm,
  .scale = cuda_scale,
};
