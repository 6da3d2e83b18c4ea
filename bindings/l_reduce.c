/* l_reduce.c: Lua bindings of the reduction family, as module functions and
 * tensor methods: sum, mean, var, std, prod, max, min, argmax, argmin, norm,
 * logsumexp, all, any, cumsum.
 *
 * The common calling convention (PyTorch's, with Lua's 1-based dims):
 *   x:sum()                      every dim -> a 0-d tensor
 *   x:sum(dim) / x:sum({d1, d2}) those dims
 *   x:sum(dim, {keepdim=true})   or x:sum(dim, true)
 *   x:sum({keepdim=true})        every dim, kept as size 1
 * Index tensors (max/min with a dim, argmax, argmin) hold 0-based values, as
 * in PyTorch: they are data, not Lua positions. */
#include <math.h>
#include <string.h>
#include "lutil.h"

/* [-0, +0, v] dims at arg (number, list, or absent/nil) then options at the
 * next position (a table, or a boolean meaning keepdim when allow_bool).
 * Returns the number of dims (0: all); *opts is the options' index or 0. */
static int reduce_args(lua_State *L, int arg, const ad_tensor *x, int *dims, bool *keepdim, int *opts,
                       bool allow_bool) {
  int nd = 0;
  *opts = 0;
  *keepdim = false;
  int t = lua_type(L, arg);
  if (t == LUA_TNUMBER || (t == LUA_TTABLE && !l_testtensor(L, arg) && !l_isopts(L, arg))) {
    nd = l_checkdims(L, arg, x->ndim, dims);
    arg++;
  } else if (t == LUA_TNIL) {
    arg++;
  }
  t = lua_type(L, arg);
  if (t == LUA_TBOOLEAN && allow_bool) {
    *keepdim = lua_toboolean(L, arg);
  } else if (t == LUA_TTABLE && !l_testtensor(L, arg)) {
    *opts = arg;
    *keepdim = l_optbool(L, arg, "keepdim", 0);
  } else if (t != LUA_TNONE && t != LUA_TNIL) {
    luaL_typeerror(L, arg, allow_bool ? "dim, list of dims, options table or boolean" : "dim, list of dims or options table");
  }
  return nd;
}

typedef ad_status (*reduce_fn)(ad_tensor **, const ad_tensor *, int, const int *, bool);

static int reduce_call(lua_State *L, reduce_fn fn) {
  ad_tensor *x = l_checktensor(L, 1);
  int dims[AD_MAX_DIMS], opts;
  bool keepdim;
  int nd = reduce_args(L, 2, x, dims, &keepdim, &opts, true);
  ad_tensor **box = l_newbox(L);
  if (fn(box, x, nd, dims, keepdim) != AD_OK) return l_error(L);
  return 1;
}

static int l_sum(lua_State *L) { return reduce_call(L, ad_sum); }
static int l_mean(lua_State *L) { return reduce_call(L, ad_mean); }
static int l_prod(lua_State *L) { return reduce_call(L, ad_prod); }
static int l_logsumexp(lua_State *L) { return reduce_call(L, ad_logsumexp); }
static int l_all(lua_State *L) { return reduce_call(L, ad_all); }
static int l_any(lua_State *L) { return reduce_call(L, ad_any); }

/* var/std: x:var(dims, {unbiased=true, correction=1, keepdim=false});
 * x:var(false) is the legacy unbiased=false */
static int var_std(lua_State *L, bool is_std) {
  ad_tensor *x = l_checktensor(L, 1);
  int dims[AD_MAX_DIMS], opts, nd = 0, correction = 1;
  bool keepdim = false;
  if (lua_type(L, 2) == LUA_TBOOLEAN) {
    correction = lua_toboolean(L, 2) ? 1 : 0;
  } else {
    nd = reduce_args(L, 2, x, dims, &keepdim, &opts, false);
    if (opts) {
      correction = l_optbool(L, opts, "unbiased", 1) ? 1 : 0;
      lua_Integer c = l_optint(L, opts, "correction", correction);
      if (c < 0) return luaL_error(L, "%s: option 'correction' must be >= 0, got %d", is_std ? "std" : "var", (int)c);
      correction = (int)c;
    }
  }
  ad_tensor **box = l_newbox(L);
  ad_status st = is_std ? ad_std(box, x, nd, dims, correction, keepdim) : ad_var(box, x, nd, dims, correction, keepdim);
  if (st != AD_OK) return l_error(L);
  return 1;
}

static int l_var(lua_State *L) { return var_std(L, false); }
static int l_std(lua_State *L) { return var_std(L, true); }

/* max/min: (x) -> 0-d; (x, y tensor) -> maximum/minimum; (x, dim, [keepdim])
 * -> values, indices */
static int max_min(lua_State *L, bool is_max) {
  ad_tensor *x = l_checktensor(L, 1);
  if (l_testtensor(L, 2) || lua_type(L, 2) == LUA_TUSERDATA) {
    ad_tensor *y = l_checktensor(L, 2);
    ad_tensor **box = l_newbox(L);
    if (ad_binary(box, x, y, is_max ? AD_BIN_MAXIMUM : AD_BIN_MINIMUM) != AD_OK) return l_error(L);
    return 1;
  }
  if (lua_type(L, 2) != LUA_TNUMBER) {
    if (!lua_isnoneornil(L, 2) && !(lua_type(L, 2) == LUA_TTABLE && l_isopts(L, 2)))
      return luaL_typeerror(L, 2, "dim or advdiff.Tensor");
    ad_tensor **box = l_newbox(L);
    if ((is_max ? ad_max_all(box, x) : ad_min_all(box, x)) != AD_OK) return l_error(L);
    return 1;
  }
  int dim = l_checkdim(L, 2, x->ndim);
  bool keepdim = false;
  if (lua_type(L, 3) == LUA_TBOOLEAN) keepdim = lua_toboolean(L, 3);
  else if (lua_type(L, 3) == LUA_TTABLE) keepdim = l_optbool(L, 3, "keepdim", 0);
  else if (!lua_isnoneornil(L, 3)) return luaL_typeerror(L, 3, "options table or boolean");
  ad_tensor **vals = l_newbox(L);
  ad_tensor **idx = l_newbox(L);
  ad_status st = is_max ? ad_max_dim(vals, idx, x, dim, keepdim) : ad_min_dim(vals, idx, x, dim, keepdim);
  if (st != AD_OK) return l_error(L);
  return 2;
}

static int l_max(lua_State *L) { return max_min(L, true); }
static int l_min(lua_State *L) { return max_min(L, false); }

/* argmax/argmin(x, [dim], [keepdim]): no dim -> index into the flattened tensor */
static int arg_extreme(lua_State *L, bool is_max) {
  ad_tensor *x = l_checktensor(L, 1);
  int dim = -1, next = 2;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    dim = l_checkdim(L, 2, x->ndim);
    next = 3;
  } else if (lua_isnil(L, 2)) {
    next = 3;
  }
  bool keepdim = false;
  if (lua_type(L, next) == LUA_TBOOLEAN) keepdim = lua_toboolean(L, next);
  else if (lua_type(L, next) == LUA_TTABLE) keepdim = l_optbool(L, next, "keepdim", 0);
  else if (!lua_isnoneornil(L, next)) return luaL_typeerror(L, next, "dim, options table or boolean");
  ad_tensor **box = l_newbox(L);
  if ((is_max ? ad_argmax(box, x, dim, keepdim) : ad_argmin(box, x, dim, keepdim)) != AD_OK) return l_error(L);
  return 1;
}

static int l_argmax(lua_State *L) { return arg_extreme(L, true); }
static int l_argmin(lua_State *L) { return arg_extreme(L, false); }

/* norm(x, [p], [dims], [opts]): p a number (math.huge for inf), "fro", "inf"
 * or "-inf"; default 2 */
static int l_norm(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  double p = 2;
  int arg = 3;
  int t = lua_type(L, 2);
  if (t == LUA_TNUMBER) {
    p = lua_tonumber(L, 2);
  } else if (t == LUA_TSTRING) {
    const char *s = lua_tostring(L, 2);
    if (strcmp(s, "fro") == 0) p = 2;
    else if (strcmp(s, "inf") == 0) p = INFINITY;
    else if (strcmp(s, "-inf") == 0) p = -INFINITY;
    else return luaL_argerror(L, 2, lua_pushfstring(L, "unsupported norm '%s' (expected a number, \"fro\", \"inf\" or \"-inf\")", s));
  } else if (t == LUA_TTABLE && l_isopts(L, 2)) {
    arg = 2; /* x:norm({keepdim=true}) */
  } else if (t != LUA_TNONE && t != LUA_TNIL) {
    return luaL_typeerror(L, 2, "number or string (the norm's p)");
  }
  int dims[AD_MAX_DIMS], opts;
  bool keepdim;
  int nd = reduce_args(L, arg, x, dims, &keepdim, &opts, true);
  ad_tensor **box = l_newbox(L);
  if (ad_norm(box, x, p, nd, dims, keepdim) != AD_OK) return l_error(L);
  return 1;
}

static int l_cumsum(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  int dim = l_checkdim(L, 2, x->ndim);
  ad_tensor **box = l_newbox(L);
  if (ad_cumsum(box, x, dim) != AD_OK) return l_error(L);
  return 1;
}

static const luaL_Reg fns[] = {
    {"sum", l_sum}, {"mean", l_mean}, {"var", l_var}, {"std", l_std}, {"prod", l_prod},
    {"max", l_max}, {"min", l_min}, {"argmax", l_argmax}, {"argmin", l_argmin}, {"norm", l_norm},
    {"logsumexp", l_logsumexp}, {"all", l_all}, {"any", l_any}, {"cumsum", l_cumsum},
    {NULL, NULL},
};

void l_register_reduce(lua_State *L, int mod, int methods) { l_setfuncs2(L, mod, methods, fns, fns); }
