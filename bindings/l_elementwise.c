/* l_elementwise.c: Lua bindings of the elementwise family: ad.add ... ad.where
 * as module functions and tensor methods, and the arithmetic metamethods
 * (__add, __sub, __mul, __div, __pow, __unm) on the tensor metatable.
 * Arithmetic, comparisons and maximum/minimum take a Lua number on either
 * side: it becomes the core's scalar operand, so it never allocates a tensor
 * and never changes the tensor's dtype (x_f32 * 0.5 stays f32). */
#include <math.h>
#include "lutil.h"

/* [-0, +0, v] the tensor at arg, or NULL with *num set when it is a number
 * (a boolean counts as 0/1); anything else raises. */
static ad_tensor *tensor_or_number(lua_State *L, int arg, double *num) {
  int t = lua_type(L, arg);
  if (t == LUA_TNUMBER) {
    *num = lua_tonumber(L, arg);
    return NULL;
  }
  if (t == LUA_TBOOLEAN) {
    *num = lua_toboolean(L, arg);
    return NULL;
  }
  if (!luaL_testudata(L, arg, L_TENSOR)) luaL_typeerror(L, arg, "advdiff.Tensor or number");
  return l_checktensor(L, arg);
}

/* [-0, +1, v] a op b, either side a tensor or a number */
static int binop(lua_State *L, ad_binop op) {
  double sa = 0, sb = 0;
  ad_tensor *a = tensor_or_number(L, 1, &sa);
  ad_tensor *b = tensor_or_number(L, 2, &sb);
  if (!a && !b) return luaL_typeerror(L, 1, "advdiff.Tensor");
  ad_tensor **box = l_newbox(L);
  ad_status st;
  if (a && b) st = ad_binary(box, a, b, op);
  else if (a) st = ad_binary_scalar(box, a, sb, op, false);
  else st = ad_binary_scalar(box, b, sa, op, true);
  if (st != AD_OK) return l_error(L);
  return 1;
}

/* ad.add(a, b, {alpha=}) / ad.sub(a, b, {alpha=}): a +- alpha * b */
static int add_sub(lua_State *L, ad_binop op) {
  if (lua_type(L, 3) != LUA_TTABLE) return binop(L, op);
  double alpha = l_optnum(L, 3, "alpha", 1.0);
  lua_settop(L, 2);
  if (alpha == 1.0) return binop(L, op);
  double sa = 0, sb = 0;
  ad_tensor *a = tensor_or_number(L, 1, &sa);
  ad_tensor *b = tensor_or_number(L, 2, &sb);
  if (!a && !b) return luaL_typeerror(L, 1, "advdiff.Tensor");
  if (op == AD_BIN_SUB) alpha = -alpha;
  ad_tensor **tmp = l_newbox(L); /* alpha * b */
  ad_tensor **box = l_newbox(L);
  ad_status st;
  if (!b) {
    st = ad_binary_scalar(box, a, alpha * sb, AD_BIN_ADD, false);
  } else {
    st = ad_binary_scalar(tmp, b, alpha, AD_BIN_MUL, false);
    if (st == AD_OK) st = a ? ad_add(box, a, *tmp) : ad_binary_scalar(box, *tmp, sa, AD_BIN_ADD, true);
  }
  if (st != AD_OK) return l_error(L);
  return 1;
}

static int l_add(lua_State *L) { return add_sub(L, AD_BIN_ADD); }
static int l_sub(lua_State *L) { return add_sub(L, AD_BIN_SUB); }
static int l_mul(lua_State *L) { return binop(L, AD_BIN_MUL); }
static int l_div(lua_State *L) { return binop(L, AD_BIN_DIV); }
static int l_pow(lua_State *L) { return binop(L, AD_BIN_POW); }
static int l_maximum(lua_State *L) { return binop(L, AD_BIN_MAXIMUM); }
static int l_minimum(lua_State *L) { return binop(L, AD_BIN_MINIMUM); }
static int l_eq(lua_State *L) { return binop(L, AD_BIN_EQ); }
static int l_ne(lua_State *L) { return binop(L, AD_BIN_NE); }
static int l_lt(lua_State *L) { return binop(L, AD_BIN_LT); }
static int l_le(lua_State *L) { return binop(L, AD_BIN_LE); }
static int l_gt(lua_State *L) { return binop(L, AD_BIN_GT); }
static int l_ge(lua_State *L) { return binop(L, AD_BIN_GE); }
static int l_logical_and(lua_State *L) { return binop(L, AD_BIN_LOGICAL_AND); }
static int l_logical_or(lua_State *L) { return binop(L, AD_BIN_LOGICAL_OR); }
static int l_logical_xor(lua_State *L) { return binop(L, AD_BIN_LOGICAL_XOR); }

/* [-0, +1, v] */
static int unop(lua_State *L, ad_unop op) {
  ad_tensor *x = l_checktensor(L, 1);
  ad_tensor **box = l_newbox(L);
  if (ad_unary(box, x, op) != AD_OK) return l_error(L);
  return 1;
}

static int l_neg(lua_State *L) { return unop(L, AD_UN_NEG); }
static int l_exp(lua_State *L) { return unop(L, AD_UN_EXP); }
static int l_log(lua_State *L) { return unop(L, AD_UN_LOG); }
static int l_log1p(lua_State *L) { return unop(L, AD_UN_LOG1P); }
static int l_expm1(lua_State *L) { return unop(L, AD_UN_EXPM1); }
static int l_sqrt(lua_State *L) { return unop(L, AD_UN_SQRT); }
static int l_rsqrt(lua_State *L) { return unop(L, AD_UN_RSQRT); }
static int l_abs(lua_State *L) { return unop(L, AD_UN_ABS); }
static int l_sign(lua_State *L) { return unop(L, AD_UN_SIGN); }
static int l_sin(lua_State *L) { return unop(L, AD_UN_SIN); }
static int l_cos(lua_State *L) { return unop(L, AD_UN_COS); }
static int l_tanh(lua_State *L) { return unop(L, AD_UN_TANH); }
static int l_sigmoid(lua_State *L) { return unop(L, AD_UN_SIGMOID); }
static int l_relu(lua_State *L) { return unop(L, AD_UN_RELU); }
static int l_silu(lua_State *L) { return unop(L, AD_UN_SILU); }
static int l_gelu(lua_State *L) { return unop(L, AD_UN_GELU); }
static int l_softplus(lua_State *L) { return unop(L, AD_UN_SOFTPLUS); }
static int l_square(lua_State *L) { return unop(L, AD_UN_SQUARE); }
static int l_reciprocal(lua_State *L) { return unop(L, AD_UN_RECIPROCAL); }
static int l_floor_op(lua_State *L) { return unop(L, AD_UN_FLOOR); }
static int l_ceil(lua_State *L) { return unop(L, AD_UN_CEIL); }
static int l_round(lua_State *L) { return unop(L, AD_UN_ROUND); }
static int l_isfinite(lua_State *L) { return unop(L, AD_UN_ISFINITE); }
static int l_isnan(lua_State *L) { return unop(L, AD_UN_ISNAN); }
static int l_logical_not(lua_State *L) { return unop(L, AD_UN_LOGICAL_NOT); }

/* [-0, +0, v] an optional clamp bound: nil/none -> absent */
static bool clamp_bound(lua_State *L, int arg, const char *what, double *v) {
  if (lua_isnoneornil(L, arg)) return false;
  if (lua_type(L, arg) != LUA_TNUMBER)
    luaL_argerror(L, arg, lua_pushfstring(L, "%s must be a number or nil, got %s", what, luaL_typename(L, arg)));
  *v = lua_tonumber(L, arg);
  return true;
}

/* ad.clamp(x, min, max) or ad.clamp(x, {min=, max=}); either bound may be nil */
static int l_clamp(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  double mn = 0, mx = 0;
  bool has_min, has_max;
  if (lua_type(L, 2) == LUA_TTABLE && !l_testtensor(L, 2)) {
    lua_getfield(L, 2, "min");
    lua_getfield(L, 2, "max");
    int top = lua_gettop(L);
    if (!lua_isnil(L, top - 1) && lua_type(L, top - 1) != LUA_TNUMBER)
      return luaL_error(L, "clamp: option 'min' must be a number, got %s", luaL_typename(L, top - 1));
    if (!lua_isnil(L, top) && lua_type(L, top) != LUA_TNUMBER)
      return luaL_error(L, "clamp: option 'max' must be a number, got %s", luaL_typename(L, top));
    has_min = clamp_bound(L, top - 1, "min", &mn);
    has_max = clamp_bound(L, top, "max", &mx);
  } else {
    has_min = clamp_bound(L, 2, "min", &mn);
    has_max = clamp_bound(L, 3, "max", &mx);
  }
  ad_tensor **box = l_newbox(L);
  if (ad_clamp(box, x, has_min, mn, has_max, mx) != AD_OK) return l_error(L);
  return 1;
}

static int l_clamp_min(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  double mn = luaL_checknumber(L, 2);
  ad_tensor **box = l_newbox(L);
  if (ad_clamp(box, x, true, mn, false, 0) != AD_OK) return l_error(L);
  return 1;
}

static int l_clamp_max(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  double mx = luaL_checknumber(L, 2);
  ad_tensor **box = l_newbox(L);
  if (ad_clamp(box, x, false, 0, true, mx) != AD_OK) return l_error(L);
  return 1;
}

/* [-0, +1, v] the where operand at arg: a tensor, or a number made into a 0-d
 * tensor (boxed on the stack) of the other operand's dtype (f32 when there
 * is none, or when the number is not integral and the dtype is not) on dev */
static ad_tensor *where_operand(lua_State *L, int arg, const ad_tensor *other, ad_device dev) {
  double v = 0;
  ad_tensor *t = tensor_or_number(L, arg, &v);
  if (t) {
    lua_pushnil(L); /* keep the stack effect uniform */
    return t;
  }
  ad_dtype dt = other ? other->dtype : AD_F32;
  if (!ad_dtype_is_float(dt) && (dt == AD_BOOL || v != floor(v))) dt = AD_F32;
  ad_tensor **box = l_newbox(L);
  if (ad_scalar_tensor(box, v, dt, dev) != AD_OK) l_error(L);
  return *box;
}

static int where_impl(lua_State *L, int ic, int ia, int ib) {
  ad_tensor *cond = l_checktensor(L, ic);
  double dummy;
  ad_tensor *ta = tensor_or_number(L, ia, &dummy), *tb = tensor_or_number(L, ib, &dummy);
  ad_device dev = ad_tensor_device(cond);
  ad_tensor *a = where_operand(L, ia, tb, dev);
  ad_tensor *b = where_operand(L, ib, ta ? ta : a, dev);
  ad_tensor **box = l_newbox(L);
  if (ad_where(box, cond, a, b) != AD_OK) return l_error(L);
  return 1;
}

/* ad.where(cond, a, b) */
static int l_where(lua_State *L) { return where_impl(L, 1, 2, 3); }
/* x:where(cond, y) == ad.where(cond, x, y) */
static int l_where_method(lua_State *L) { return where_impl(L, 2, 1, 3); }

/* x:add_(y), x:mul_(s): in place and unrecorded (optimizer updates), so
 * refused on tensors that take part in autograd while grad mode is on */
static void check_inplace(lua_State *L, const char *name, const ad_tensor *t) {
  if (t->requires_grad && ad_grad_enabled())
    luaL_error(L, "%s: in-place update of a tensor that requires grad; wrap it in ad.no_grad", name);
}

static int l_add_(lua_State *L) {
  ad_tensor *t = l_checktensor(L, 1);
  ad_tensor *s = l_checktensor(L, 2);
  check_inplace(L, "add_", t);
  if (ad_add_(t, s) != AD_OK) return l_error(L);
  lua_settop(L, 1);
  return 1;
}

static int l_mul_(lua_State *L) {
  ad_tensor *t = l_checktensor(L, 1);
  double s = luaL_checknumber(L, 2);
  check_inplace(L, "mul_", t);
  if (ad_mul_scalar_(t, s) != AD_OK) return l_error(L);
  lua_settop(L, 1);
  return 1;
}

static const luaL_Reg fns[] = {
    {"add", l_add}, {"sub", l_sub}, {"mul", l_mul}, {"div", l_div}, {"pow", l_pow},
    {"maximum", l_maximum}, {"minimum", l_minimum},
    {"eq", l_eq}, {"ne", l_ne}, {"lt", l_lt}, {"le", l_le}, {"gt", l_gt}, {"ge", l_ge},
    {"logical_and", l_logical_and}, {"logical_or", l_logical_or}, {"logical_xor", l_logical_xor},
    {"logical_not", l_logical_not}, {"isfinite", l_isfinite}, {"isnan", l_isnan},
    {"neg", l_neg}, {"exp", l_exp}, {"log", l_log}, {"log1p", l_log1p}, {"expm1", l_expm1},
    {"sqrt", l_sqrt}, {"rsqrt", l_rsqrt}, {"abs", l_abs}, {"sign", l_sign}, {"sin", l_sin},
    {"cos", l_cos}, {"tanh", l_tanh}, {"sigmoid", l_sigmoid}, {"relu", l_relu}, {"silu", l_silu},
    {"gelu", l_gelu}, {"softplus", l_softplus}, {"square", l_square}, {"reciprocal", l_reciprocal},
    {"floor", l_floor_op}, {"ceil", l_ceil}, {"round", l_round},
    {"clamp", l_clamp}, {"clamp_min", l_clamp_min}, {"clamp_max", l_clamp_max},
    {"where", l_where},
    {NULL, NULL},
};

static const luaL_Reg meths[] = {
    {"add", l_add}, {"sub", l_sub}, {"mul", l_mul}, {"div", l_div}, {"pow", l_pow},
    {"maximum", l_maximum}, {"minimum", l_minimum},
    {"eq", l_eq}, {"ne", l_ne}, {"lt", l_lt}, {"le", l_le}, {"gt", l_gt}, {"ge", l_ge},
    {"logical_and", l_logical_and}, {"logical_or", l_logical_or}, {"logical_xor", l_logical_xor},
    {"logical_not", l_logical_not}, {"isfinite", l_isfinite}, {"isnan", l_isnan},
    {"neg", l_neg}, {"exp", l_exp}, {"log", l_log}, {"log1p", l_log1p}, {"expm1", l_expm1},
    {"sqrt", l_sqrt}, {"rsqrt", l_rsqrt}, {"abs", l_abs}, {"sign", l_sign}, {"sin", l_sin},
    {"cos", l_cos}, {"tanh", l_tanh}, {"sigmoid", l_sigmoid}, {"relu", l_relu}, {"silu", l_silu},
    {"gelu", l_gelu}, {"softplus", l_softplus}, {"square", l_square}, {"reciprocal", l_reciprocal},
    {"floor", l_floor_op}, {"ceil", l_ceil}, {"round", l_round},
    {"clamp", l_clamp}, {"clamp_min", l_clamp_min}, {"clamp_max", l_clamp_max},
    {"where", l_where_method},
    {"add_", l_add_}, {"mul_", l_mul_},
    {NULL, NULL},
};

void l_register_elementwise(lua_State *L, int mod, int methods) {
  l_setfuncs2(L, mod, methods, fns, meths);
  static const luaL_Reg meta[] = {
      {"__add", l_add}, {"__sub", l_sub}, {"__mul", l_mul}, {"__div", l_div}, {"__pow", l_pow},
      {"__unm", l_neg}, {NULL, NULL},
  };
  luaL_getmetatable(L, L_TENSOR);
  luaL_setfuncs(L, meta, 0);
  lua_pop(L, 1);
}
