/* autocast.h: mixed-precision autocast, the state behind ad.autocast.
 *
 * While a thread's autocast is enabled, the autocast-aware front ends apply
 * one of PyTorch's two autocast policies to their inputs:
 *  - lower precision (ad_autocast_applies / ad_autocast_cast): conv2d
 *    (conv1d), matmul, bmm, linear and scaled_dot_product_attention run in
 *    the autocast dtype (bf16 or f16); their f32/f16/bf16 inputs are cast.
 *  - f32 (ad_autocast_applies_f32 / ad_autocast_cast_f32): group_norm,
 *    layer_norm, softmax, log_softmax and the losses (mse_loss, l1_loss,
 *    binary_cross_entropy_with_logits, cross_entropy, nll_loss) upcast their
 *    f16/bf16 inputs to f32 and return f32, as on PyTorch's CUDA fp32 list:
 *    statistics, exponentials and sums over many terms need f32's range and
 *    precision, and the loss that backward starts from stays f32.
 * batch_norm is on neither list, as in PyTorch: it computes in f32 inside
 * (with f32 weights and running statistics) and returns the input's dtype,
 * as cuDNN's batch norm does. Every other op (elementwise, reductions) is
 * untouched and keeps computing in the dtype it is given.
 * The casts are ad_to_dtype, which is recorded, so gradients flow back to
 * each input in its own dtype (f32 parameters get f32 gradients). Inputs in
 * f64 switch autocast off for that op (as PyTorch leaves float64 alone), so
 * gradchecks are unaffected. The state is thread-local; scopes nest. */
#ifndef AD_AUTOCAST_H
#define AD_AUTOCAST_H

#include <stdbool.h>
#include "tensor.h"

typedef struct { bool enabled; ad_dtype dtype; } ad_autocast_state;

ad_autocast_state ad_autocast_get(void);
/* sets the thread's state and returns the previous one (dtype: AD_BF16 or AD_F16) */
ad_status ad_autocast_set(ad_autocast_state s, ad_autocast_state *prev);
/* Should a lower-precision op with these inputs (NULL entries ignored) run
 * cast? True when autocast is on, no input is f64, and some floating input
 * is not already in the autocast dtype. */
bool ad_autocast_applies(const ad_tensor *const *ts, int n);
/* out[i] = ts[i] cast to the autocast dtype when floating (new references;
 * NULL stays NULL, bool/integer tensors are retained as they are), and
 * autocast suspended on this thread until ad_autocast_release, so the op's
 * own internal calls are not cast again. On failure nothing is held; the
 * caller still calls ad_autocast_release (which then only resumes). */
ad_status ad_autocast_cast(ad_tensor **out, const ad_tensor *const *ts, int n);
/* Should an f32-policy op with these inputs run cast? True when autocast is
 * on, no input is f64, and some input is f16 or bf16 (either one, whatever
 * the autocast dtype: PyTorch upcasts both). */
bool ad_autocast_applies_f32(const ad_tensor *const *ts, int n);
/* As ad_autocast_cast, to f32: f16/bf16 inputs are cast, every other input
 * (f32, integer, bool) is retained as it is. */
ad_status ad_autocast_cast_f32(ad_tensor **out, const ad_tensor *const *ts, int n);
/* releases the casts and resumes autocast */
void ad_autocast_release(ad_tensor **ts, int n);

#endif
