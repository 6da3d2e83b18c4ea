/* autocast.c: the thread-local autocast state and the input casts the
 * autocast-aware front ends use (see autocast.h). */
#include "autocast.h"
#include "ops.h"

static _Thread_local ad_autocast_state state = {false, AD_BF16};
/* the state to restore when the op that cast its inputs is done */
static _Thread_local ad_autocast_state saved;
static _Thread_local bool suspended;

ad_autocast_state ad_autocast_get(void) { return state; }

ad_status ad_autocast_set(ad_autocast_state s, ad_autocast_state *prev) {
  if (s.enabled && s.dtype != AD_BF16 && s.dtype != AD_F16)
    return AD_FAIL(AD_EDTYPE, "autocast: dtype must be bf16 or f16, got %s", ad_dtype_name(s.dtype));
  if (prev) *prev = state;
  state = s;
  return AD_OK;
}

bool ad_autocast_applies(const ad_tensor *const *ts, int n) {
  if (!state.enabled) return false;
  bool differs = false;
  for (int i = 0; i < n; i++) {
    const ad_tensor *t = ts[i];
    if (!t || !ad_dtype_is_float(t->dtype)) continue;
    if (t->dtype == AD_F64) return false;
    if (t->dtype != state.dtype) differs = true;
  }
  return differs;
}

/* Autocast is suspended until ad_autocast_release: the op then runs on the
 * cast inputs, and any op it calls internally (a CPU half-precision path that
 * goes through f32, say) is not cast back again. */
ad_status ad_autocast_cast(ad_tensor **out, const ad_tensor *const *ts, int n) {
  for (int i = 0; i < n; i++) out[i] = NULL;
  if (!suspended) {
    saved = state;
    suspended = true;
    state.enabled = false;
  }
  for (int i = 0; i < n; i++) {
    const ad_tensor *t = ts[i];
    if (!t) continue;
    ad_status st;
    if (ad_dtype_is_float(t->dtype)) st = ad_to_dtype(&out[i], t, state.dtype);
    else { ad_tensor_retain((ad_tensor *)t); out[i] = (ad_tensor *)t; st = AD_OK; }
    if (st != AD_OK) { ad_autocast_release(out, n); return st; }
  }
  return AD_OK;
}

void ad_autocast_release(ad_tensor **ts, int n) {
  for (int i = 0; i < n; i++) { ad_tensor_release(ts[i]); ts[i] = NULL; }
  if (suspended) {
    state = saved;
    suspended = false;
  }
}
