/* backend_optim.h: the optimizer family — multi-tensor parameter updates
 * (Adam/AdamW, SGD with momentum, EMA) and the global squared norm used for
 * gradient clipping. Front ends in core/ops/optim.c, CPU kernels in
 * core/cpu/cpu_optim.c; a CUDA backend fills the same struct.
 *
 * Each kernel takes LISTS of tensors so one call updates a whole model (one
 * launch per step on a GPU, one parallel region on the CPU) instead of one op
 * per parameter from Lua. These ops are updates in place: they are never
 * recorded by autograd and run whatever the grad mode.
 *
 * Front ends guarantee, before calling a kernel: every list has n entries;
 * for each i, params[i], grads[i] and every state tensor have the same shape
 * and are contiguous, on one device; params[i] is f32, f64, f16 or bf16;
 * grads[i] has params[i]'s dtype; state tensors are f32, or f64 when the
 * parameter is f64 (f16/bf16 parameters keep f32 state, as PyTorch's fused
 * Adam does). Scalars arrive in the attrs struct, so the kernels need no host
 * reads of device memory. */
#ifndef AD_BACKEND_OPTIM_H
#define AD_BACKEND_OPTIM_H

#include <stdbool.h>
#include <stdint.h>
#include "tensor.h"

/* Adam / AdamW, PyTorch's formula (torch.optim.Adam, single-tensor path):
 *   g = grad / grad_scale                (grad_scale 1: none; an f16 loss scaler's unscale, fused)
 *   g = maximize ? -g : g
 *   coupled weight decay (Adam):   g += weight_decay * p
 *   decoupled weight decay (AdamW): p *= 1 - lr * weight_decay
 *   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
 *   p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
 * step is the count INCLUDING this update (1 on the first). */
typedef struct {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;
  bool decoupled;     /* AdamW */
  bool maximize;
  double grad_scale;  /* divide gradients by this first; 1 = none */
} ad_adam_attrs;

/* SGD, torch.optim.SGD's formula:
 *   g = grad / grad_scale; g = maximize ? -g : g; g += weight_decay * p
 *   momentum != 0:  buf = first ? g : momentum * buf + (1 - dampening) * g
 *                   g = nesterov ? g + momentum * buf : buf
 *   p -= lr * g
 * first: the momentum buffers hold nothing yet (PyTorch's buf = clone(g)). */
typedef struct {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize, first;
  double grad_scale;
} ad_sgd_attrs;

struct ad_optim_kernels {
  /* exp_avg, exp_avg_sq: state, updated in place; params updated in place */
  ad_status (*adam_step)(ad_tensor *const *params, const ad_tensor *const *grads, ad_tensor *const *exp_avg,
                         ad_tensor *const *exp_avg_sq, int n, const ad_adam_attrs *a);
  /* momentum_buf may be NULL when a->momentum == 0 */
  ad_status (*sgd_step)(ad_tensor *const *params, const ad_tensor *const *grads, ad_tensor *const *momentum_buf,
                        int n, const ad_sgd_attrs *a);
  /* ema[i] = decay * ema[i] + (1 - decay) * src[i] (torch's lerp_(src, 1 - decay));
   * ema and src of one float dtype each (may differ) */
  ad_status (*ema_update)(ad_tensor *const *ema, const ad_tensor *const *src, int n, double decay);
  /* out: a 0-d f64 tensor on the tensors' device <- sum_i sum_j xs[i][j]^2
   * (accumulated in double; inf/NaN propagate). */
  ad_status (*sq_norm)(ad_tensor *out, const ad_tensor *const *xs, int n);
  /* xs[i] *= s (in place), every float dtype */
  ad_status (*scale)(ad_tensor *const *xs, int n, double s);
};

extern const struct ad_optim_kernels ad_cpu_optim_kernels;

/* ---- front ends (core/ops/optim.c) -------------------------------------- */
/* Lists may mix dtypes and shapes across i but not within one i; they must
 * all live on one device. Non-contiguous tensors are refused (parameters and
 * optimizer state are always contiguous in practice; a silent copy would
 * update the copy). Fails without touching anything when a check fails. */
ad_status ad_adam_step(ad_tensor *const *params, ad_tensor *const *grads, ad_tensor *const *exp_avg,
                       ad_tensor *const *exp_avg_sq, int n, const ad_adam_attrs *a);
ad_status ad_sgd_step(ad_tensor *const *params, ad_tensor *const *grads, ad_tensor *const *momentum_buf, int n,
                      const ad_sgd_attrs *a);
ad_status ad_ema_update(ad_tensor *const *ema, ad_tensor *const *src, int n, double decay);
/* *out: a new 0-d f64 tensor (on the tensors' device; CPU when n == 0) holding
 * the sum of squares of every element of every tensor */
ad_status ad_foreach_sq_norm(ad_tensor **out, ad_tensor *const *xs, int n);
ad_status ad_foreach_scale_(ad_tensor *const *xs, int n, double s);

#endif
