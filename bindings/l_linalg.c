/* l_linalg.c: Lua bindings of the linear-algebra, convolution, pooling,
 * resampling and padding ops. Names and arguments follow torch /
 * torch.nn.functional; keyword arguments go in a trailing options table.
 *
 *   ad.matmul(a, b), a:matmul(b)         torch.matmul semantics (1-D, 2-D, batched + broadcast)
 *   ad.bmm(a, b), a:bmm(b)               (B, n, k) @ (B, k, m)
 *   ad.linear(x, w, [b])                 x @ w^T + b
 *   ad.conv2d(x, w, [b], {stride=1, padding=0, dilation=1, groups=1})
 *        stride/padding/dilation: n or {h, w}; padding also "same" (stride 1) or "valid"
 *   ad.conv1d(x, w, [b], {stride=1, padding=0, dilation=1, groups=1})
 *   ad.max_pool2d(x, kernel, {stride=kernel, padding=0, dilation=1, ceil_mode=false, return_indices=false})
 *        with return_indices, also returns the i64 indices: flat positions h*W + w in each
 *        input plane, 0-based as in PyTorch (they are data, not Lua positions)
 *   ad.avg_pool2d(x, kernel, {stride=kernel, padding=0, ceil_mode=false, count_include_pad=true,
 *                 divisor_override=nil})
 *   ad.adaptive_avg_pool2d(x, size)      size: n or {h, w}
 *   ad.interpolate(x, {size=, scale_factor=, mode="nearest"|"bilinear", align_corners=false})
 *        scale_factor gives the size floor(in * scale_factor); the kernels then use in/out
 *        as the scale (PyTorch's recompute_scale_factor=True behaviour)
 *   ad.upsample_nearest2d(x, size | {size=, scale_factor=})
 *   ad.upsample_bilinear2d(x, size | {size=, scale_factor=}, [{align_corners=false}])
 *   ad.pad(x, {left, right, top, bottom, ...}, {mode="constant", value=0})
 *        pads the last dim first (F.pad's order); mode also "reflect", "replicate";
 *        the mode may be given directly as a string third argument
 *
 * Optional tensors may be nil or left out when the options table follows
 * directly (ad.conv2d(x, w, {padding=1})). */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "lutil.h"

/* index of the options table: the first plain table at or after `first`, 0 if none */
static int find_opts(lua_State *L, int first) {
  int top = lua_gettop(L);
  for (int i = first; i <= top; i++)
    if (l_isopts(L, i)) return i;
  return 0;
}

static ad_tensor *opt_tensor_before(lua_State *L, int arg, int opts) {
  if (opts && arg >= opts) return NULL;
  return l_opttensor(L, arg);
}

/* a number n -> {n, n}; a table {a, b} -> {a, b}; raises naming fn and what */
static void check_pair(lua_State *L, int arg, const char *fn, const char *what, int out[2]) {
  if (lua_type(L, arg) == LUA_TNUMBER) {
    int isnum;
    lua_Integer v = lua_tointegerx(L, arg, &isnum);
    if (!isnum) luaL_error(L, "%s: %s must be an integer or a pair {h, w}", fn, what);
    out[0] = out[1] = (int)v;
    return;
  }
  if (lua_type(L, arg) == LUA_TTABLE && luaL_len(L, arg) == 2) {
    for (int i = 0; i < 2; i++) {
      lua_geti(L, arg, i + 1);
      int isnum;
      lua_Integer v = lua_tointegerx(L, -1, &isnum);
      lua_pop(L, 1);
      if (!isnum) luaL_error(L, "%s: %s must be an integer or a pair {h, w}", fn, what);
      out[i] = (int)v;
    }
    return;
  }
  luaL_error(L, "%s: %s must be an integer or a pair {h, w}, got %s", fn, what, luaL_typename(L, arg));
}

/* an option holding a pair: absent -> def */
static void opt_pair(lua_State *L, int opts, const char *name, const char *fn, int def, int out[2]) {
  out[0] = out[1] = def;
  if (!opts || lua_getfield(L, opts, name) == LUA_TNIL) { if (opts) lua_pop(L, 1); return; }
  char what[64];
  snprintf(what, sizeof what, "option '%s'", name);
  check_pair(L, lua_gettop(L), fn, what, out);
  lua_pop(L, 1);
}

/* ======================================================================= linear algebra */

static int l_matmul(lua_State *L) {
  ad_tensor *a = l_checktensor(L, 1), *b = l_checktensor(L, 2);
  ad_tensor **box = l_newbox(L);
  if (ad_matmul(box, a, b) != AD_OK) return l_error(L);
  return 1;
}

static int l_bmm(lua_State *L) {
  ad_tensor *a = l_checktensor(L, 1), *b = l_checktensor(L, 2);
  ad_tensor **box = l_newbox(L);
  if (ad_bmm(box, a, b) != AD_OK) return l_error(L);
  return 1;
}

static int l_linear(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1), *w = l_checktensor(L, 2), *b = l_opttensor(L, 3);
  ad_tensor **box = l_newbox(L);
  if (ad_linear(box, x, w, b) != AD_OK) return l_error(L);
  return 1;
}

/* ======================================================================= convolution */

/* padding option: a pair, or "valid" (0), or "same" (sets *same) */
static void conv_padding(lua_State *L, int opts, const char *fn, int out[2], int *same) {
  *same = 0;
  out[0] = out[1] = 0;
  if (!opts) return;
  int t = lua_getfield(L, opts, "padding");
  if (t == LUA_TSTRING) {
    const char *s = lua_tostring(L, -1);
    if (strcmp(s, "same") == 0) *same = 1;
    else if (strcmp(s, "valid") != 0) luaL_error(L, "%s: padding must be a number, a pair {h, w}, \"same\" or \"valid\", got \"%s\"", fn, s);
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  opt_pair(L, opts, "padding", fn, 0, out);
}

/* "same" for kernel extent e = dilation*(k-1)+1: total e-1, the odd one on the right */
static void same_split(int64_t k, int d, int64_t *lo, int64_t *hi) {
  int64_t total = (int64_t)d * (k - 1);
  *lo = total / 2;
  *hi = total - *lo;
}

static int l_conv2d(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1), *w = l_checktensor(L, 2);
  int opts = find_opts(L, 3);
  ad_tensor *b = opt_tensor_before(L, 3, opts);
  ad_conv2d_args a;
  int same;
  opt_pair(L, opts, "stride", "conv2d", 1, a.stride);
  opt_pair(L, opts, "dilation", "conv2d", 1, a.dilation);
  conv_padding(L, opts, "conv2d", a.padding, &same);
  a.groups = (int)l_optint(L, opts, "groups", 1);
  int64_t pads[4] = {0, 0, 0, 0};   /* F.pad order: w_lo, w_hi, h_lo, h_hi */
  bool asym = false;
  if (same) {
    if (a.stride[0] != 1 || a.stride[1] != 1) return luaL_error(L, "conv2d: padding=\"same\" needs stride 1");
    if (w->ndim == 4) {
      same_split(w->shape[2], a.dilation[0], &pads[2], &pads[3]);
      same_split(w->shape[3], a.dilation[1], &pads[0], &pads[1]);
    }
    asym = pads[0] != pads[1] || pads[2] != pads[3];
    a.padding[0] = asym ? 0 : (int)pads[2];
    a.padding[1] = asym ? 0 : (int)pads[0];
  }
  ad_tensor **tmp = asym ? l_newbox(L) : NULL;
  ad_tensor **box = l_newbox(L);
  if (asym && ad_pad(tmp, x, 4, pads, 0, 0.0) != AD_OK) return l_error(L);
  if (ad_conv2d(box, asym ? *tmp : x, w, b, &a) != AD_OK) return l_error(L);
  return 1;
}

static int l_conv1d(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1), *w = l_checktensor(L, 2);
  int opts = find_opts(L, 3);
  ad_tensor *b = opt_tensor_before(L, 3, opts);
  int stride = (int)l_optint(L, opts, "stride", 1), dilation = (int)l_optint(L, opts, "dilation", 1);
  int groups = (int)l_optint(L, opts, "groups", 1), padding = 0, same = 0;
  if (opts) {
    int t = lua_getfield(L, opts, "padding");
    if (t == LUA_TSTRING) {
      const char *s = lua_tostring(L, -1);
      if (strcmp(s, "same") == 0) same = 1;
      else if (strcmp(s, "valid") != 0) return luaL_error(L, "conv1d: padding must be a number, \"same\" or \"valid\", got \"%s\"", s);
    } else if (t != LUA_TNIL) {
      int isnum;
      lua_Integer v = lua_tointegerx(L, -1, &isnum);
      if (!isnum) return luaL_error(L, "conv1d: padding must be a number, \"same\" or \"valid\", got %s", luaL_typename(L, -1));
      padding = (int)v;
    }
    lua_pop(L, 1);
  }
  int64_t pads[2] = {0, 0};
  bool asym = false;
  if (same) {
    if (stride != 1) return luaL_error(L, "conv1d: padding=\"same\" needs stride 1");
    if (w->ndim == 3) same_split(w->shape[2], dilation, &pads[0], &pads[1]);
    asym = pads[0] != pads[1];
    padding = asym ? 0 : (int)pads[0];
  }
  ad_tensor **tmp = asym ? l_newbox(L) : NULL;
  ad_tensor **box = l_newbox(L);
  if (asym && ad_pad(tmp, x, 2, pads, 0, 0.0) != AD_OK) return l_error(L);
  if (ad_conv1d(box, asym ? *tmp : x, w, b, stride, padding, dilation, groups) != AD_OK) return l_error(L);
  return 1;
}

/* ======================================================================= pooling */

static void pool_args(lua_State *L, const char *fn, int opts, ad_pool2d_args *a) {
  memset(a, 0, sizeof *a);
  check_pair(L, 2, fn, "kernel_size", a->kernel);
  opt_pair(L, opts, "stride", fn, 0, a->stride);   /* absent: 0, which the core reads as the kernel size */
  if (opts) {
    int given = lua_getfield(L, opts, "stride") != LUA_TNIL;
    lua_pop(L, 1);
    if (given && (a->stride[0] < 1 || a->stride[1] < 1))
      luaL_error(L, "%s: stride must be >= 1, got %d", fn, a->stride[0] < 1 ? a->stride[0] : a->stride[1]);
  }
  opt_pair(L, opts, "padding", fn, 0, a->padding);
  a->ceil_mode = l_optbool(L, opts, "ceil_mode", 0);
}

static int l_max_pool2d(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  int opts = find_opts(L, 3);
  ad_pool2d_args a;
  pool_args(L, "max_pool2d", opts, &a);
  opt_pair(L, opts, "dilation", "max_pool2d", 1, a.dilation);
  int want_idx = l_optbool(L, opts, "return_indices", 0);
  ad_tensor **box = l_newbox(L);
  ad_tensor **ibox = want_idx ? l_newbox(L) : NULL;
  if (ad_max_pool2d(box, ibox, x, &a) != AD_OK) return l_error(L);
  return want_idx ? 2 : 1;
}

static int l_avg_pool2d(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  int opts = find_opts(L, 3);
  ad_pool2d_args a;
  pool_args(L, "avg_pool2d", opts, &a);
  a.dilation[0] = a.dilation[1] = 1;
  a.count_include_pad = l_optbool(L, opts, "count_include_pad", 1);
  lua_Integer div = l_optint(L, opts, "divisor_override", 0);
  if (opts) {
    int given = lua_getfield(L, opts, "divisor_override") != LUA_TNIL;
    lua_pop(L, 1);
    if (given && div == 0) return luaL_error(L, "avg_pool2d: divisor_override must not be 0");
  }
  a.divisor_override = (int)div;
  ad_tensor **box = l_newbox(L);
  if (ad_avg_pool2d(box, x, &a) != AD_OK) return l_error(L);
  return 1;
}

static int l_adaptive_avg_pool2d(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  int size[2];
  check_pair(L, 2, "adaptive_avg_pool2d", "output_size", size);
  ad_tensor **box = l_newbox(L);
  if (ad_adaptive_avg_pool2d(box, x, size[0], size[1]) != AD_OK) return l_error(L);
  return 1;
}

/* ======================================================================= resampling */

/* Output size of an upsampling from `size` (n or {h, w}) or `scale_factor`
 * (number or pair: floor(in * s)), both read from the table at opts. */
static void resample_size(lua_State *L, const char *fn, const ad_tensor *x, int opts, int64_t out[2]) {
  int has_size = lua_getfield(L, opts, "size") != LUA_TNIL;
  if (has_size) {
    int s[2];
    check_pair(L, lua_gettop(L), fn, "size", s);
    out[0] = s[0];
    out[1] = s[1];
  }
  lua_pop(L, 1);
  int t = lua_getfield(L, opts, "scale_factor");
  if (t != LUA_TNIL) {
    if (has_size) luaL_error(L, "%s: give either size or scale_factor, not both", fn);
    double sf[2] = {0, 0};
    if (t == LUA_TNUMBER) sf[0] = sf[1] = lua_tonumber(L, -1);
    else if (t == LUA_TTABLE && luaL_len(L, -1) == 2) {
      for (int i = 0; i < 2; i++) {
        lua_geti(L, -1, i + 1);
        if (lua_type(L, -1) != LUA_TNUMBER) luaL_error(L, "%s: scale_factor must be a number or a pair", fn);
        sf[i] = lua_tonumber(L, -1);
        lua_pop(L, 1);
      }
    } else luaL_error(L, "%s: scale_factor must be a number or a pair, got %s", fn, luaL_typename(L, -1));
    if (!(sf[0] > 0) || !(sf[1] > 0)) luaL_error(L, "%s: scale_factor must be positive", fn);
    if (x->ndim < 2) luaL_error(L, "%s: input must be 3-D or 4-D", fn);
    out[0] = (int64_t)floor((double)x->shape[x->ndim - 2] * sf[0]);
    out[1] = (int64_t)floor((double)x->shape[x->ndim - 1] * sf[1]);
  } else if (!has_size) {
    luaL_error(L, "%s: either size or scale_factor is required", fn);
  }
  lua_pop(L, 1);
}

static int l_interpolate(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  int64_t size[2];
  resample_size(L, "interpolate", x, 2, size);
  const char *mode = l_optstr(L, 2, "mode", "nearest");
  int bilinear = strcmp(mode, "bilinear") == 0;
  if (!bilinear && strcmp(mode, "nearest") != 0)
    return luaL_error(L, "interpolate: mode must be \"nearest\" or \"bilinear\", got \"%s\"", mode);
  lua_getfield(L, 2, "align_corners");
  int has_ac = !lua_isnil(L, -1);
  lua_pop(L, 1);
  if (has_ac && !bilinear) return luaL_error(L, "interpolate: align_corners only applies to mode \"bilinear\"");
  int ac = l_optbool(L, 2, "align_corners", 0);
  ad_tensor **box = l_newbox(L);
  ad_status st = bilinear ? ad_upsample_bilinear2d(box, x, size[0], size[1], ac)
                          : ad_upsample_nearest2d(box, x, size[0], size[1]);
  if (st != AD_OK) return l_error(L);
  return 1;
}

/* size at arg 2: n, {h, w}, or a table {size=, scale_factor=} */
static void upsample_size(lua_State *L, const char *fn, const ad_tensor *x, int64_t out[2]) {
  if (l_isopts(L, 2)) { resample_size(L, fn, x, 2, out); return; }
  int s[2];
  check_pair(L, 2, fn, "size", s);
  out[0] = s[0];
  out[1] = s[1];
}

static int l_upsample_nearest2d(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  int64_t size[2];
  upsample_size(L, "upsample_nearest2d", x, size);
  ad_tensor **box = l_newbox(L);
  if (ad_upsample_nearest2d(box, x, size[0], size[1]) != AD_OK) return l_error(L);
  return 1;
}

static int l_upsample_bilinear2d(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  int64_t size[2];
  upsample_size(L, "upsample_bilinear2d", x, size);
  int ac = l_optbool(L, l_isopts(L, 2) ? 2 : (l_isopts(L, 3) ? 3 : 0), "align_corners", 0);
  ad_tensor **box = l_newbox(L);
  if (ad_upsample_bilinear2d(box, x, size[0], size[1], ac) != AD_OK) return l_error(L);
  return 1;
}

static int l_pad(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer n = luaL_len(L, 2);
  if (n > 2 * AD_MAX_DIMS) return luaL_error(L, "pad: too many padding values (%d)", (int)n);
  int64_t pads[2 * AD_MAX_DIMS];
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 2, i);
    int isnum;
    lua_Integer v = lua_tointegerx(L, -1, &isnum);
    if (!isnum) return luaL_error(L, "pad: padding values must be integers (entry %d is %s)", (int)i, luaL_typename(L, -1));
    pads[i - 1] = v;
    lua_pop(L, 1);
  }
  const char *mode = "constant";
  double value = 0;
  if (lua_type(L, 3) == LUA_TSTRING) mode = lua_tostring(L, 3);
  else if (l_isopts(L, 3)) {
    mode = l_optstr(L, 3, "mode", "constant");
    value = l_optnum(L, 3, "value", 0);
  } else if (!lua_isnoneornil(L, 3)) {
    return luaL_error(L, "pad: third argument must be an options table or a mode string, got %s", luaL_typename(L, 3));
  }
  int m;
  if (strcmp(mode, "constant") == 0) m = 0;
  else if (strcmp(mode, "reflect") == 0) m = 1;
  else if (strcmp(mode, "replicate") == 0) m = 2;
  else return luaL_error(L, "pad: mode must be \"constant\", \"reflect\" or \"replicate\", got \"%s\"", mode);
  if (m != 0 && value != 0) return luaL_error(L, "pad: value only applies to mode \"constant\"");
  ad_tensor **box = l_newbox(L);
  if (ad_pad(box, x, (int)n, pads, m, value) != AD_OK) return l_error(L);
  return 1;
}

void l_register_linalg(lua_State *L, int mod, int methods) {
  static const luaL_Reg fns[] = {
    {"matmul", l_matmul},
    {"bmm", l_bmm},
    {"linear", l_linear},
    {"conv2d", l_conv2d},
    {"conv1d", l_conv1d},
    {"max_pool2d", l_max_pool2d},
    {"avg_pool2d", l_avg_pool2d},
    {"adaptive_avg_pool2d", l_adaptive_avg_pool2d},
    {"interpolate", l_interpolate},
    {"upsample_nearest2d", l_upsample_nearest2d},
    {"upsample_bilinear2d", l_upsample_bilinear2d},
    {"pad", l_pad},
    {NULL, NULL},
  };
  static const luaL_Reg meths[] = {
    {"matmul", l_matmul},
    {"bmm", l_bmm},
    {NULL, NULL},
  };
  l_setfuncs2(L, mod, methods, fns, meths);
}
