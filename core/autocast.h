/* autocast.h: mixed-precision autocast, the state behind ad.autocast.
 *
 * While a thread's autocast is enabled, the front ends of conv2d (conv1d),
 * matmul, bmm, linear and scaled_dot_product_attention run in the autocast
 * dtype (bf16 or f16): their f32/f16/bf16 inputs are cast with ad_to_dtype,
 * which is recorded, so gradients flow back to the f32 parameters in f32.
 * Every other op (norms, softmax, losses, reductions) is untouched, so it
 * keeps computing in the dtype it is given. Inputs in f64 switch autocast
 * off for that op (as PyTorch leaves float64 alone), so gradchecks are
 * unaffected. The state is thread-local; scopes nest. */
#ifndef AD_AUTOCAST_H
#define AD_AUTOCAST_H

#include <stdbool.h>
#include "tensor.h"

typedef struct { bool enabled; ad_dtype dtype; } ad_autocast_state;

ad_autocast_state ad_autocast_get(void);
/* sets the thread's state and returns the previous one (dtype: AD_BF16 or AD_F16) */
ad_status ad_autocast_set(ad_autocast_state s, ad_autocast_state *prev);
/* Should an op with these inputs (NULL entries ignored) run cast? True when
 * autocast is on, no input is f64, and some floating input is not already in
 * the autocast dtype. */
bool ad_autocast_applies(const ad_tensor *const *ts, int n);
/* out[i] = ts[i] cast to the autocast dtype when floating (new references;
 * NULL stays NULL, bool/integer tensors are retained as they are), and
 * autocast suspended on this thread until ad_autocast_release, so the op's
 * own internal calls are not cast again. On failure nothing is held; the
 * caller still calls ad_autocast_release (which then only resumes). */
ad_status ad_autocast_cast(ad_tensor **out, const ad_tensor *const *ts, int n);
/* releases the casts and resumes autocast */
void ad_autocast_release(ad_tensor **ts, int n);

#endif
