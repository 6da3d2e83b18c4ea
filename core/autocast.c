/* autocast.c: the thread-local autocast state and the input casts the
 * autocast-aware front ends use, under either policy (see autocast.h). */
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

bool ad_autocast_applies_f32(const ad_tensor *const *ts, int n) {
  if (!state.enabled) return false;
  bool half = false;
  for (int i = 0; i < n; i++) {
    const ad_tensor *t = ts[i];
    if (!t) continue;
    if (t->dtype == AD_F64) return false;
    if (t->dtype == AD_F16 || t->dtype == AD_BF16) half = true;
  }
  return half;
}

/* Casts the floating inputs that cast_this selects to dt. Autocast is
 * suspended until ad_autocast_release: the op then runs on the cast inputs,
 * and any op it calls internally (a CPU half-precision path that goes
 * through f32, a loss that calls log_softmax, say) is not cast again. */
static ad_status cast_inputs(ad_tensor **out, const ad_tensor *const *ts, int n, ad_dtype dt,
                             bool (*cast_this)(ad_dtype)) {
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
    if (cast_this(t->dtype)) st = ad_to_dtype(&out[i], t, dt);
    else { ad_tensor_retain((ad_tensor *)t); out[i] = (ad_tensor *)t; st = AD_OK; }
    if (st != AD_OK) { ad_autocast_release(out, n); return st; }
  }
  return AD_OK;
}

static bool is_half(ad_dtype dt) { return dt == AD_F16 || dt == AD_BF16; }

ad_status ad_autocast_cast(ad_tensor **out, const ad_tensor *const *ts, int n) {
  return cast_inputs(out, ts, n, state.dtype, ad_dtype_is_float);
}

ad_status ad_autocast_cast_f32(ad_tensor **out, const ad_tensor *const *ts, int n) {
  return cast_inputs(out, ts, n, AD_F32, is_half);
}

void ad_autocast_release(ad_tensor **ts, int n) {
  for (int i = 0; i < n; i++) { ad_tensor_release(ts[i]); ts[i] = NULL; }
  if (suspended) {
    state = saved;
    suspended = false;
  }
}
