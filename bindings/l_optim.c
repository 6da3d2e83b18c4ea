/* l_optim.c: Lua bindings of the optimizer family (core/backend_optim.h).
 * These are the engine of ad.optim (lua/advdiff/optim/); users call the
 * optimizer classes, not these.
 *
 *   ad._adam_step(params, grads, exp_avg, exp_avg_sq, {lr=, beta1=, beta2=, eps=, weight_decay=,
 *                 step=, decoupled=false, maximize=false, grad_scale=1})
 *   ad._sgd_step(params, grads, bufs_or_nil, {lr=, momentum=0, dampening=0, weight_decay=0,
 *                nesterov=false, maximize=false, first=false, grad_scale=1})
 *   ad._ema_update(ema, params, decay)
 *   ad._foreach_sq_norm(tensors) -> 0-d f64 tensor (sum of squares of every element)
 *   ad._foreach_scale_(tensors, s)
 * Every list is a Lua sequence of tensors; lists of one call have one length. */
#include "lutil.h"
#include "../core/backend_optim.h"

/* [-0, +1, m] the tensors of the list at arg in a scratch userdata (left on
 * the stack, so the array is collected with it); *n receives the length.
 * Raises before anything is owned. want: the length required, or -1. */
static ad_tensor **check_list(lua_State *L, int arg, const char *fn, const char *what, int want, int *n) {
  luaL_checktype(L, arg, LUA_TTABLE);
  lua_Integer len = luaL_len(L, arg);
  if (len > 1 << 24) luaL_error(L, "%s: %s has too many tensors", fn, what);
  if (want >= 0 && len != want)
    luaL_error(L, "%s: %s has %d tensors, expected %d (one per parameter)", fn, what, (int)len, want);
  ad_tensor **arr = lua_newuserdatauv(L, sizeof *arr * (size_t)(len ? len : 1), 0);
  for (lua_Integer i = 1; i <= len; i++) {
    lua_geti(L, arg, i);
    ad_tensor **box = luaL_testudata(L, -1, L_TENSOR);
    if (!box || !*box) luaL_error(L, "%s: %s[%d] must be a tensor, got %s", fn, what, (int)i, luaL_typename(L, -1));
    arr[i - 1] = *box;
    lua_pop(L, 1);
  }
  *n = (int)len;
  return arr;
}

static int l_adam_step(lua_State *L) {
  const char *fn = "_adam_step";
  int n, n2;
  luaL_checktype(L, 5, LUA_TTABLE);
  ad_tensor **p = check_list(L, 1, fn, "params", -1, &n);
  ad_tensor **g = check_list(L, 2, fn, "grads", n, &n2);
  ad_tensor **m = check_list(L, 3, fn, "exp_avg", n, &n2);
  ad_tensor **v = check_list(L, 4, fn, "exp_avg_sq", n, &n2);
  ad_adam_attrs a;
  a.lr = l_optnum(L, 5, "lr", 1e-3);
  a.beta1 = l_optnum(L, 5, "beta1", 0.9);
  a.beta2 = l_optnum(L, 5, "beta2", 0.999);
  a.eps = l_optnum(L, 5, "eps", 1e-8);
  a.weight_decay = l_optnum(L, 5, "weight_decay", 0);
  a.step = l_optint(L, 5, "step", 1);
  a.decoupled = l_optbool(L, 5, "decoupled", 0);
  a.maximize = l_optbool(L, 5, "maximize", 0);
  a.grad_scale = l_optnum(L, 5, "grad_scale", 1);
  if (ad_adam_step(p, g, m, v, n, &a) != AD_OK) return l_error(L);
  return 0;
}

static int l_sgd_step(lua_State *L) {
  const char *fn = "_sgd_step";
  int n, n2;
  luaL_checktype(L, 4, LUA_TTABLE);
  ad_tensor **p = check_list(L, 1, fn, "params", -1, &n);
  ad_tensor **g = check_list(L, 2, fn, "grads", n, &n2);
  ad_tensor **b = lua_isnil(L, 3) ? NULL : check_list(L, 3, fn, "momentum_buffer", n, &n2);
  ad_sgd_attrs a;
  a.lr = l_optnum(L, 4, "lr", 1e-3);
  a.momentum = l_optnum(L, 4, "momentum", 0);
  a.dampening = l_optnum(L, 4, "dampening", 0);
  a.weight_decay = l_optnum(L, 4, "weight_decay", 0);
  a.nesterov = l_optbool(L, 4, "nesterov", 0);
  a.maximize = l_optbool(L, 4, "maximize", 0);
  a.first = l_optbool(L, 4, "first", 0);
  a.grad_scale = l_optnum(L, 4, "grad_scale", 1);
  if (ad_sgd_step(p, g, b, n, &a) != AD_OK) return l_error(L);
  return 0;
}

static int l_ema_update(lua_State *L) {
  int n, n2;
  double decay = luaL_checknumber(L, 3);
  ad_tensor **e = check_list(L, 1, "_ema_update", "ema", -1, &n);
  ad_tensor **s = check_list(L, 2, "_ema_update", "params", n, &n2);
  if (ad_ema_update(e, s, n, decay) != AD_OK) return l_error(L);
  return 0;
}

static int l_foreach_sq_norm(lua_State *L) {
  int n;
  ad_tensor **xs = check_list(L, 1, "_foreach_sq_norm", "tensors", -1, &n);
  ad_tensor **box = l_newbox(L);
  if (ad_foreach_sq_norm(box, xs, n) != AD_OK) return l_error(L);
  return 1;
}

static int l_foreach_scale(lua_State *L) {
  int n;
  double s = luaL_checknumber(L, 2);
  ad_tensor **xs = check_list(L, 1, "_foreach_scale_", "tensors", -1, &n);
  if (ad_foreach_scale_(xs, n, s) != AD_OK) return l_error(L);
  return 0;
}

static const luaL_Reg optim_fns[] = {
  {"_adam_step", l_adam_step},
  {"_sgd_step", l_sgd_step},
  {"_ema_update", l_ema_update},
  {"_foreach_sq_norm", l_foreach_sq_norm},
  {"_foreach_scale_", l_foreach_scale},
  {NULL, NULL},
};

void l_register_optim(lua_State *L, int mod, int methods) {
  l_setfuncs2(L, mod, methods, optim_fns, NULL);
}
