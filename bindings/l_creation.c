/* l_creation.c: tensors from Lua tables, zeros/ones/full/empty, ranges and
 * random creation, with {dtype=, device=, requires_grad=, generator=}. */
#include <math.h>
#include <stdlib.h>
#include "lutil.h"

/* After creation: honour requires_grad. */
static int finish(lua_State *L, ad_tensor **box, int opts) {
  if (opts && l_optbool(L, opts, "requires_grad", 0))
    if (ad_set_requires_grad(*box, true) != AD_OK) return l_error(L);
  return 1;
}

/* shape args then an optional options table */
static int shape_and_opts(lua_State *L, int arg, int64_t *shape, int *opts) {
  int next;
  int n;
  if (lua_type(L, arg) == LUA_TTABLE && lua_type(L, arg + 1) == LUA_TTABLE && luaL_len(L, arg) == 0) {
    n = 0;                     /* zeros({}, {dtype=...}): an empty shape, then options */
    next = arg + 1;
  } else {
    n = l_checkshape(L, arg, shape, &next);
  }
  *opts = 0;
  if (lua_type(L, next) == LUA_TTABLE) *opts = next;
  else if (!lua_isnone(L, next) && !lua_isnil(L, next))
    luaL_argerror(L, next, lua_pushfstring(L, "expected a size or an options table, got %s", luaL_typename(L, next)));
  for (int i = 0; i < n; i++)
    if (shape[i] < 0) luaL_argerror(L, arg + i, "sizes must be non-negative");
  return n;
}

static int fill_new(lua_State *L, double value, int use_value_arg) {
  int64_t shape[AD_MAX_DIMS];
  int opts, n;
  if (use_value_arg) {
    /* full(shape_table, value[, opts]) as torch.full(size, fill_value) */
    if (!lua_istable(L, 1)) return luaL_argerror(L, 1, "full: expected a shape table, e.g. ad.full({2, 3}, 7)");
    n = l_checkshape(L, 1, shape, NULL);
    value = lua_isboolean(L, 2) ? lua_toboolean(L, 2) : luaL_checknumber(L, 2);
    opts = lua_type(L, 3) == LUA_TTABLE ? 3 : 0;
  } else {
    n = shape_and_opts(L, 1, shape, &opts);
  }
  ad_dtype dt = l_optdtype(L, opts, "dtype", AD_F32);
  ad_device dev = l_optdevice(L, opts, "device", AD_CPU);
  ad_tensor **box = l_newbox(L);
  if (ad_full(box, n, shape, value, dt, dev) != AD_OK) return l_error(L);
  return finish(L, box, opts);
}
static int l_zeros(lua_State *L) { return fill_new(L, 0.0, 0); }
static int l_ones(lua_State *L) { return fill_new(L, 1.0, 0); }
static int l_full(lua_State *L) { return fill_new(L, 0.0, 1); }
static int l_empty(lua_State *L) {
  int64_t shape[AD_MAX_DIMS];
  int opts;
  int n = shape_and_opts(L, 1, shape, &opts);
  ad_dtype dt = l_optdtype(L, opts, "dtype", AD_F32);
  ad_device dev = l_optdevice(L, opts, "device", AD_CPU);
  ad_tensor **box = l_newbox(L);
  if (ad_empty(box, n, shape, dt, dev) != AD_OK) return l_error(L);
  return finish(L, box, opts);
}

/* zeros_like(x, {dtype=, device=}) etc. */
static int like_new(lua_State *L, int kind) {
  ad_tensor *x = l_checktensor(L, 1);
  double value = 0;
  int opts = 2;
  if (kind == 2) { value = luaL_checknumber(L, 2); opts = 3; }
  if (lua_type(L, opts) != LUA_TTABLE) opts = 0;
  ad_dtype dt = l_optdtype(L, opts, "dtype", x->dtype);
  ad_device dev = l_optdevice(L, opts, "device", x->storage->device);
  ad_generator *g = l_optgenerator(L, opts, "generator");
  ad_tensor **box = l_newbox(L);
  ad_status st;
  switch (kind) {
  case 0: st = ad_full(box, x->ndim, x->shape, 0, dt, dev); break;
  case 1: st = ad_full(box, x->ndim, x->shape, 1, dt, dev); break;
  case 2: st = ad_full(box, x->ndim, x->shape, value, dt, dev); break;
  case 3: st = ad_empty(box, x->ndim, x->shape, dt, dev); break;
  case 4: st = ad_rand(box, x->ndim, x->shape, dt, dev, g); break;
  default: st = ad_randn(box, x->ndim, x->shape, dt, dev, g); break;
  }
  if (st != AD_OK) return l_error(L);
  return finish(L, box, opts);
}
static int l_zeros_like(lua_State *L) { return like_new(L, 0); }
static int l_ones_like(lua_State *L) { return like_new(L, 1); }
static int l_full_like(lua_State *L) { return like_new(L, 2); }
static int l_empty_like(lua_State *L) { return like_new(L, 3); }
static int l_rand_like(lua_State *L) { return like_new(L, 4); }
static int l_randn_like(lua_State *L) { return like_new(L, 5); }

static int random_new(lua_State *L, int normal) {
  int64_t shape[AD_MAX_DIMS];
  int opts;
  int n = shape_and_opts(L, 1, shape, &opts);
  ad_dtype dt = l_optdtype(L, opts, "dtype", AD_F32);
  ad_device dev = l_optdevice(L, opts, "device", AD_CPU);
  ad_generator *g = l_optgenerator(L, opts, "generator");
  ad_tensor **box = l_newbox(L);
  ad_status st = normal ? ad_randn(box, n, shape, dt, dev, g) : ad_rand(box, n, shape, dt, dev, g);
  if (st != AD_OK) return l_error(L);
  return finish(L, box, opts);
}
static int l_rand(lua_State *L) { return random_new(L, 0); }
static int l_randn(lua_State *L) { return random_new(L, 1); }

/* randint(low, high, shape..., opts) or randint(high, shape) when shape is a table */
static int l_randint(lua_State *L) {
  lua_Integer low = 0, high;
  int arg;
  if (lua_isinteger(L, 1) && lua_isinteger(L, 2) && (lua_istable(L, 3) || lua_isinteger(L, 3))) {
    low = lua_tointeger(L, 1); high = lua_tointeger(L, 2); arg = 3;
  } else {
    high = luaL_checkinteger(L, 1); arg = 2;
  }
  int64_t shape[AD_MAX_DIMS];
  int opts;
  int n = shape_and_opts(L, arg, shape, &opts);
  ad_dtype dt = l_optdtype(L, opts, "dtype", AD_I64);
  ad_device dev = l_optdevice(L, opts, "device", AD_CPU);
  ad_generator *g = l_optgenerator(L, opts, "generator");
  ad_tensor **box = l_newbox(L);
  if (ad_randint(box, low, high, n, shape, dt, dev, g) != AD_OK) return l_error(L);
  return 1;
}
static int l_randperm(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  int opts = lua_type(L, 2) == LUA_TTABLE ? 2 : 0;
  ad_dtype dt = l_optdtype(L, opts, "dtype", AD_I64);
  ad_device dev = l_optdevice(L, opts, "device", AD_CPU);
  ad_generator *g = l_optgenerator(L, opts, "generator");
  ad_tensor **box = l_newbox(L);
  if (ad_randperm(box, n, dt, dev, g) != AD_OK) return l_error(L);
  return 1;
}

/* arange(end) / arange(start, end[, step]) [, opts]; integer arguments give i64 like PyTorch */
static int l_arange(lua_State *L) {
  int nnum = 0;
  while (nnum < 3 && lua_type(L, nnum + 1) == LUA_TNUMBER) nnum++;
  if (nnum == 0) return luaL_argerror(L, 1, "expected arange(end), arange(start, end) or arange(start, end, step)");
  double start = 0, end, step = 1;
  int all_int = 1;
  for (int i = 1; i <= nnum; i++) all_int &= lua_isinteger(L, i);
  if (nnum == 1) end = lua_tonumber(L, 1);
  else { start = lua_tonumber(L, 1); end = lua_tonumber(L, 2); if (nnum == 3) step = lua_tonumber(L, 3); }
  int opts = lua_type(L, nnum + 1) == LUA_TTABLE ? nnum + 1 : 0;
  ad_dtype dt = l_optdtype(L, opts, "dtype", all_int ? AD_I64 : AD_F32);
  ad_device dev = l_optdevice(L, opts, "device", AD_CPU);
  ad_tensor **box = l_newbox(L);
  if (ad_arange(box, start, end, step, dt, dev) != AD_OK) return l_error(L);
  return finish(L, box, opts);
}
static int l_linspace(lua_State *L) {
  double a = luaL_checknumber(L, 1), b = luaL_checknumber(L, 2);
  lua_Integer steps = luaL_checkinteger(L, 3);
  int opts = lua_type(L, 4) == LUA_TTABLE ? 4 : 0;
  ad_dtype dt = l_optdtype(L, opts, "dtype", AD_F32);
  ad_device dev = l_optdevice(L, opts, "device", AD_CPU);
  ad_tensor **box = l_newbox(L);
  if (ad_linspace(box, a, b, steps, dt, dev) != AD_OK) return l_error(L);
  return finish(L, box, opts);
}
static int l_eye(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  lua_Integer m = lua_isinteger(L, 2) ? lua_tointeger(L, 2) : n;
  int opts = lua_type(L, 2) == LUA_TTABLE ? 2 : lua_type(L, 3) == LUA_TTABLE ? 3 : 0;
  ad_dtype dt = l_optdtype(L, opts, "dtype", AD_F32);
  ad_device dev = l_optdevice(L, opts, "device", AD_CPU);
  ad_tensor **box = l_newbox(L);
  if (ad_eye(box, n, m, dt, dev) != AD_OK) return l_error(L);
  return finish(L, box, opts);
}

/* ---- ad.tensor(nested table or number, opts) ---- */
typedef struct { int ndim; int64_t shape[AD_MAX_DIMS]; int has_float, has_bool, has_int; } scan_t;

static void scan_shape(lua_State *L, int idx, int d, scan_t *s) {
  if (lua_type(L, idx) == LUA_TTABLE) {
    if (d >= AD_MAX_DIMS) luaL_error(L, "tensor: too many nesting levels (at most %d)", AD_MAX_DIMS);
    lua_Integer len = luaL_len(L, idx);
    if (d == s->ndim) { s->shape[d] = len; s->ndim = d + 1; }
    if (s->shape[d] != len) luaL_error(L, "tensor: ragged nested table (dimension %d has lengths %d and %d)",
                                       d + 1, (int)s->shape[d], (int)len);
    if (len > 0) { lua_geti(L, idx, 1); scan_shape(L, lua_gettop(L), d + 1, s); lua_pop(L, 1); }
  }
}

static void fill_rec(lua_State *L, int idx, int d, const scan_t *s, ad_tensor *t, int64_t *k) {
  if (d == s->ndim) {
    int tp = lua_type(L, idx);
    double v;
    if (tp == LUA_TNUMBER) v = lua_tonumber(L, idx);
    else if (tp == LUA_TBOOLEAN) v = lua_toboolean(L, idx);
    else { luaL_error(L, "tensor: elements must be numbers or booleans, got %s", luaL_typename(L, idx)); return; }
    ad_store_elem(ad_data(t), t->dtype, (*k)++, v);
    return;
  }
  if (lua_type(L, idx) != LUA_TTABLE || luaL_len(L, idx) != s->shape[d]) {
    luaL_error(L, "tensor: ragged nested table (expected %d elements at depth %d)", (int)s->shape[d], d + 1);
    return;
  }
  for (int64_t i = 1; i <= s->shape[d]; i++) {
    lua_geti(L, idx, i);
    fill_rec(L, lua_gettop(L), d + 1, s, t, k);
    lua_pop(L, 1);
  }
}

static void scan_types(lua_State *L, int idx, int d, scan_t *s) {
  if (lua_type(L, idx) == LUA_TTABLE) {
    lua_Integer len = luaL_len(L, idx);
    for (lua_Integer i = 1; i <= len; i++) { lua_geti(L, idx, i); scan_types(L, lua_gettop(L), d + 1, s); lua_pop(L, 1); }
  } else if (lua_type(L, idx) == LUA_TBOOLEAN) s->has_bool = 1;
  else if (lua_isinteger(L, idx)) s->has_int = 1;
  else if (lua_type(L, idx) == LUA_TNUMBER) s->has_float = 1;
}

static int l_tensor_new(lua_State *L) {
  int tp = lua_type(L, 1);
  if (l_testtensor(L, 1)) return luaL_argerror(L, 1, "already a tensor (use clone() or to())");
  if (tp != LUA_TTABLE && tp != LUA_TNUMBER && tp != LUA_TBOOLEAN)
    return luaL_argerror(L, 1, lua_pushfstring(L, "expected a nested table of numbers, got %s", luaL_typename(L, 1)));
  int opts = lua_type(L, 2) == LUA_TTABLE ? 2 : 0;
  scan_t s = {0};
  luaL_checkstack(L, 2 * AD_MAX_DIMS + 8, "tensor");
  scan_shape(L, 1, 0, &s);
  scan_types(L, 1, 0, &s);
  ad_dtype def = s.has_float ? AD_F32 : s.has_int ? AD_I64 : s.has_bool ? AD_BOOL : AD_F32;
  ad_dtype dt = l_optdtype(L, opts, "dtype", def);
  ad_device dev = l_optdevice(L, opts, "device", AD_CPU);
  ad_tensor **hbox = l_newbox(L);
  int hidx = lua_gettop(L);
  if (ad_empty(hbox, s.ndim, s.shape, dt, AD_CPU) != AD_OK) return l_error(L);
  int64_t k = 0;
  fill_rec(L, 1, 0, &s, *hbox, &k);
  if (dev.type != AD_DEV_CPU) {
    ad_tensor **box = l_newbox(L);
    if (ad_to_device(box, *hbox, dev) != AD_OK) return l_error(L);
    lua_remove(L, hidx);
    return finish(L, box, opts);
  }
  return finish(L, hbox, opts);
}

/* x:uniform_(a, b, {generator=}) and x:normal_(mean, std, {generator=}): in place, not recorded */
static int l_uniform_(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  double a = luaL_optnumber(L, 2, 0), b = luaL_optnumber(L, 3, 1);
  ad_generator *g = l_optgenerator(L, lua_type(L, 4) == LUA_TTABLE ? 4 : 0, "generator");
  if (ad_uniform_(x, a, b, g) != AD_OK) return l_error(L);
  lua_settop(L, 1);
  return 1;
}
static int l_normal_(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  double m = luaL_optnumber(L, 2, 0), sd = luaL_optnumber(L, 3, 1);
  ad_generator *g = l_optgenerator(L, lua_type(L, 4) == LUA_TTABLE ? 4 : 0, "generator");
  if (ad_normal_(x, m, sd, g) != AD_OK) return l_error(L);
  lua_settop(L, 1);
  return 1;
}

static const luaL_Reg fns[] = {
  {"tensor", l_tensor_new}, {"zeros", l_zeros}, {"ones", l_ones}, {"full", l_full}, {"empty", l_empty},
  {"zeros_like", l_zeros_like}, {"ones_like", l_ones_like}, {"full_like", l_full_like},
  {"empty_like", l_empty_like}, {"rand_like", l_rand_like}, {"randn_like", l_randn_like},
  {"rand", l_rand}, {"randn", l_randn}, {"randint", l_randint}, {"randperm", l_randperm},
  {"arange", l_arange}, {"linspace", l_linspace}, {"eye", l_eye},
  {NULL, NULL},
};
static const luaL_Reg meths[] = {
  {"zeros_like", l_zeros_like}, {"ones_like", l_ones_like}, {"full_like", l_full_like},
  {"rand_like", l_rand_like}, {"randn_like", l_randn_like},
  {"uniform_", l_uniform_}, {"normal_", l_normal_},
  {NULL, NULL},
};

void l_register_creation(lua_State *L, int mod, int methods) { l_setfuncs2(L, mod, methods, fns, meths); }
