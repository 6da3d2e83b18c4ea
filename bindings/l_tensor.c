/* l_tensor.c: the advdiff.Tensor userdata: lifetime (__gc/__close/free),
 * field access (x.grad, x.requires_grad, x[i]), printing, conversion to Lua
 * values, and dtype/device conversion methods. */
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include "lutil.h"

/* [-0, +0, -] __gc, __close and x:free() share this idempotent release */
static int l_release(lua_State *L) {
  ad_tensor **box = luaL_checkudata(L, 1, L_TENSOR);
  ad_tensor_release(*box);
  *box = NULL;
  return 0;
}

static int l_is_tensor(lua_State *L) {
  ad_tensor **box = luaL_testudata(L, 1, L_TENSOR);
  lua_pushboolean(L, box && *box);
  return 1;
}

static void push_shape(lua_State *L, const ad_tensor *t) {
  lua_createtable(L, t->ndim, 0);
  for (int i = 0; i < t->ndim; i++) { lua_pushinteger(L, t->shape[i]); lua_rawseti(L, -2, i + 1); }
}

static int l_shape(lua_State *L) { push_shape(L, l_checktensor(L, 1)); return 1; }

static int l_size(lua_State *L) {
  ad_tensor *t = l_checktensor(L, 1);
  if (lua_isnoneornil(L, 2)) { push_shape(L, t); return 1; }
  lua_pushinteger(L, t->shape[l_checkdim(L, 2, t->ndim)]);
  return 1;
}
static int l_stride(lua_State *L) {
  ad_tensor *t = l_checktensor(L, 1);
  if (lua_isnoneornil(L, 2)) {
    lua_createtable(L, t->ndim, 0);
    for (int i = 0; i < t->ndim; i++) { lua_pushinteger(L, t->strides[i]); lua_rawseti(L, -2, i + 1); }
    return 1;
  }
  lua_pushinteger(L, t->strides[l_checkdim(L, 2, t->ndim)]);
  return 1;
}
static int l_dim(lua_State *L) { lua_pushinteger(L, l_checktensor(L, 1)->ndim); return 1; }
static int l_numel(lua_State *L) { lua_pushinteger(L, ad_numel(l_checktensor(L, 1))); return 1; }
static int l_dtype(lua_State *L) { lua_pushstring(L, ad_dtype_name(l_checktensor(L, 1)->dtype)); return 1; }
static int l_device(lua_State *L) {
  char buf[32];
  lua_pushstring(L, ad_device_str(l_checktensor(L, 1)->storage->device, buf, sizeof buf));
  return 1;
}
static int l_is_contiguous(lua_State *L) { lua_pushboolean(L, ad_is_contiguous(l_checktensor(L, 1))); return 1; }
static int l_storage_offset(lua_State *L) { lua_pushinteger(L, l_checktensor(L, 1)->offset); return 1; }
static int l_nbytes(lua_State *L) {
  ad_tensor *t = l_checktensor(L, 1);
  lua_pushinteger(L, ad_numel(t) * (lua_Integer)ad_dtype_size(t->dtype));
  return 1;
}

static void push_elem(lua_State *L, ad_dtype dt, double v) {
  if (dt == AD_BOOL) lua_pushboolean(L, v != 0);
  else if (!ad_dtype_is_float(dt)) lua_pushinteger(L, (lua_Integer)v);
  else lua_pushnumber(L, v);
}

/* Host copy for reading values: contiguous and on the CPU. */
static ad_tensor *host_contiguous(lua_State *L, ad_tensor *t, ad_tensor **box) {
  bool prev = ad_set_grad_enabled(false);
  ad_tensor *h = NULL, *c = NULL;
  ad_status st = ad_to_device(&h, t, AD_CPU);
  if (st == AD_OK) { st = ad_contiguous(&c, h); ad_tensor_release(h); }
  ad_set_grad_enabled(prev);
  if (st != AD_OK) l_error(L);
  *box = c;
  return c;
}

static int l_item(lua_State *L) {
  ad_tensor *t = l_checktensor(L, 1);
  if (ad_numel(t) != 1) {
    char s[128];
    return luaL_error(L, "item: only one-element tensors can be converted to a number, got shape %s",
                      ad_shape_str(t->ndim, t->shape, s, sizeof s));
  }
  push_elem(L, t->dtype, ad_get_flat(t, 0));
  return 1;
}

static void tolist_rec(lua_State *L, const ad_tensor *t, int d, int64_t *flat) {
  if (d == t->ndim) { push_elem(L, t->dtype, ad_load_elem(ad_data(t), t->dtype, (*flat)++)); return; }
  lua_createtable(L, (int)t->shape[d], 0);
  for (int64_t i = 0; i < t->shape[d]; i++) {
    tolist_rec(L, t, d + 1, flat);
    lua_rawseti(L, -2, i + 1);
  }
}

static int l_tolist(lua_State *L) {
  ad_tensor *t = l_checktensor(L, 1);
  ad_tensor **box = l_newbox(L);
  ad_tensor *c = host_contiguous(L, t, box);
  int64_t flat = 0;
  luaL_checkstack(L, c->ndim + 4, "tolist");
  tolist_rec(L, c, 0, &flat);
  return 1;
}

static int l_getflat(lua_State *L) {
  ad_tensor *t = l_checktensor(L, 1);
  int64_t i = l_checkindex(L, 2, ad_numel(t));
  push_elem(L, t->dtype, ad_get_flat(t, i));
  return 1;
}
static int l_setflat(lua_State *L) {
  ad_tensor *t = l_checktensor(L, 1);
  int64_t i = l_checkindex(L, 2, ad_numel(t));
  double v = lua_isboolean(L, 3) ? lua_toboolean(L, 3) : luaL_checknumber(L, 3);
  if (ad_set_flat(t, i, v) != AD_OK) return l_error(L);
  return 0;
}

/* x:to("f64"), x:to("cuda"), x:to{dtype=, device=} */
static int l_to(lua_State *L) {
  ad_tensor *t = l_checktensor(L, 1);
  ad_dtype dt = t->dtype;
  ad_device dev = t->storage->device;
  for (int a = 2; a <= lua_gettop(L); a++) {
    if (lua_type(L, a) == LUA_TSTRING) {
      const char *s = lua_tostring(L, a);
      if (strncmp(s, "cpu", 3) == 0 || strncmp(s, "cuda", 4) == 0) dev = l_checkdevice(L, a);
      else dt = l_checkdtype(L, a);
    } else if (lua_type(L, a) == LUA_TTABLE) {
      dt = l_optdtype(L, a, "dtype", dt);
      dev = l_optdevice(L, a, "device", dev);
    } else if (!lua_isnil(L, a)) {
      return luaL_argerror(L, a, "expected a dtype name, a device name or {dtype=, device=}");
    }
  }
  ad_tensor **box = l_newbox(L);
  ad_tensor *mid = NULL;
  if (ad_to_device(&mid, t, dev) != AD_OK) return l_error(L);
  ad_status st = ad_to_dtype(box, mid, dt);
  ad_tensor_release(mid);
  if (st != AD_OK) return l_error(L);
  return 1;
}

static int to_dtype_named(lua_State *L, ad_dtype dt) {
  ad_tensor *t = l_checktensor(L, 1);
  ad_tensor **box = l_newbox(L);
  if (ad_to_dtype(box, t, dt) != AD_OK) return l_error(L);
  return 1;
}
static int l_float(lua_State *L) { return to_dtype_named(L, AD_F32); }
static int l_double(lua_State *L) { return to_dtype_named(L, AD_F64); }
static int l_half(lua_State *L) { return to_dtype_named(L, AD_F16); }
static int l_bfloat16(lua_State *L) { return to_dtype_named(L, AD_BF16); }
static int l_long(lua_State *L) { return to_dtype_named(L, AD_I64); }
static int l_int(lua_State *L) { return to_dtype_named(L, AD_I32); }
static int l_byte(lua_State *L) { return to_dtype_named(L, AD_U8); }
static int l_bool(lua_State *L) { return to_dtype_named(L, AD_BOOL); }

static int to_device_named(lua_State *L, ad_device dev) {
  ad_tensor *t = l_checktensor(L, 1);
  ad_tensor **box = l_newbox(L);
  if (ad_to_device(box, t, dev) != AD_OK) return l_error(L);
  return 1;
}
static int l_cpu(lua_State *L) { return to_device_named(L, AD_CPU); }
static int l_cuda(lua_State *L) {
  ad_device dev = {AD_DEV_CUDA, (int)luaL_optinteger(L, 2, 0)};
  return to_device_named(L, dev);
}

/* ---- printing, PyTorch style ---- */
typedef struct { char *buf; size_t len, cap; int oom; } sbuf;
static void sb_add(sbuf *b, const char *s) {
  size_t n = strlen(s);
  if (b->oom) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = (b->cap ? b->cap : 256);
    while (cap < b->len + n + 1) cap *= 2;
    char *nb = realloc(b->buf, cap);
    if (!nb) { b->oom = 1; return; }
    b->buf = nb; b->cap = cap;
  }
  memcpy(b->buf + b->len, s, n + 1);
  b->len += n;
}

typedef struct { const ad_tensor *t; bool summarize; int width; int sci; bool integral; } pfmt;

static void fmt_elem(const pfmt *f, double v, char *out, size_t n) {
  ad_dtype dt = f->t->dtype;
  if (dt == AD_BOOL) { snprintf(out, n, "%s", v != 0 ? "true" : "false"); return; }
  if (!ad_dtype_is_float(dt)) { snprintf(out, n, "%lld", (long long)v); return; }
  if (isnan(v)) { snprintf(out, n, "nan"); return; }
  if (isinf(v)) { snprintf(out, n, v > 0 ? "inf" : "-inf"); return; }
  if (f->sci) snprintf(out, n, "%.4e", v);
  else if (f->integral) snprintf(out, n, "%.0f.", v);
  else snprintf(out, n, "%.4f", v);
}

#define EDGE 3
static void print_rec(sbuf *b, const pfmt *f, int d, int64_t base, int indent) {
  const ad_tensor *t = f->t;
  char tmp[64], pad[80];
  if (t->ndim == 0) {
    fmt_elem(f, ad_load_elem(ad_data(t), t->dtype, 0), tmp, sizeof tmp);
    sb_add(b, tmp);
    return;
  }
  int64_t n = t->shape[d];
  sb_add(b, "[");
  for (int64_t i = 0; i < n; i++) {
    if (f->summarize && n > 2 * EDGE && i == EDGE) {
      sb_add(b, d == t->ndim - 1 ? "..., " : "...,\n");
      if (d != t->ndim - 1) {
        memset(pad, ' ', (size_t)indent + 1); pad[indent + 1] = 0;
        sb_add(b, pad);
      }
      i = n - EDGE;
    }
    int64_t off = base + i * t->strides[d];
    if (d == t->ndim - 1) {
      fmt_elem(f, ad_load_elem(ad_data(t), t->dtype, off), tmp, sizeof tmp);
      int w = (int)strlen(tmp);
      for (int k = w; k < f->width; k++) sb_add(b, " ");
      sb_add(b, tmp);
      if (i < n - 1) sb_add(b, ", ");
    } else {
      print_rec(b, f, d + 1, off, indent + 1);
      if (i < n - 1) {
        sb_add(b, ",");
        for (int k = d; k < t->ndim - 1; k++) sb_add(b, "\n");
        memset(pad, ' ', (size_t)indent + 1); pad[indent + 1] = 0;
        sb_add(b, pad);
      }
    }
  }
  sb_add(b, "]");
}

static int l_tostring(lua_State *L) {
  ad_tensor **box0 = luaL_checkudata(L, 1, L_TENSOR);
  if (!*box0) { lua_pushliteral(L, "tensor(freed)"); return 1; }
  ad_tensor *t = *box0;
  ad_tensor **box = l_newbox(L);
  ad_tensor *c = host_contiguous(L, t, box);
  int64_t n = ad_numel(c);
  pfmt f = {c, n > 1000, 0, 0, true};
  double maxabs = 0, minabs = INFINITY;
  for (int64_t i = 0; i < n; i++) {
    double v = ad_load_elem(ad_data(c), c->dtype, i);
    if (!isfinite(v)) continue;
    if (v != floor(v)) f.integral = false;
    double a = fabs(v);
    if (a > maxabs) maxabs = a;
    if (a > 0 && a < minabs) minabs = a;
  }
  if (ad_dtype_is_float(c->dtype) && n > 0 && (maxabs >= 1e8 || (minabs < 1e-4 && !f.integral)))
    f.sci = 1;
  char tmp[64];
  for (int64_t i = 0; i < n; i++) {
    fmt_elem(&f, ad_load_elem(ad_data(c), c->dtype, i), tmp, sizeof tmp);
    int w = (int)strlen(tmp);
    if (w > f.width) f.width = w;
  }
  sbuf b = {0};
  sb_add(&b, "tensor(");
  if (n == 0 && c->ndim > 0) sb_add(&b, "[]");
  else print_rec(&b, &f, 0, 0, 7);
  char meta[256], shp[128];
  char dev[32];
  snprintf(meta, sizeof meta, ", dtype=%s, shape=%s", ad_dtype_name(c->dtype), ad_shape_str(c->ndim, c->shape, shp, sizeof shp));
  sb_add(&b, meta);
  if (t->storage->device.type != AD_DEV_CPU) {
    snprintf(meta, sizeof meta, ", device=%s", ad_device_str(t->storage->device, dev, sizeof dev));
    sb_add(&b, meta);
  }
  if (t->grad_fn) { snprintf(meta, sizeof meta, ", grad_fn=<%s>", t->grad_fn->op->name); sb_add(&b, meta); }
  else if (t->requires_grad) sb_add(&b, ", requires_grad=true");
  sb_add(&b, ")");
  if (b.oom) { free(b.buf); return luaL_error(L, "tostring: out of memory"); }
  lua_pushlstring(L, b.buf, b.len);   /* may raise: free first is impossible, so copy via pcall-free path */
  free(b.buf);
  return 1;
}

/* ---- field access ---- */
static int l_index(lua_State *L) {
  ad_tensor *t = l_checktensor(L, 1);
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *k = lua_tostring(L, 2);
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "__methods");
    lua_pushvalue(L, 2);
    if (lua_rawget(L, -2) != LUA_TNIL) return 1;
    if (strcmp(k, "requires_grad") == 0) { lua_pushboolean(L, t->requires_grad); return 1; }
    if (strcmp(k, "grad") == 0) {
      if (!t->grad) { lua_pushnil(L); return 1; }
      ad_tensor_retain(t->grad);
      l_pushtensor(L, t->grad);
      return 1;
    }
    if (strcmp(k, "is_leaf") == 0) { lua_pushboolean(L, ad_is_leaf(t)); return 1; }
    if (strcmp(k, "grad_fn") == 0) {
      if (t->grad_fn) lua_pushstring(L, t->grad_fn->op->name); else lua_pushnil(L);
      return 1;
    }
    if (strcmp(k, "ndim") == 0) { lua_pushinteger(L, t->ndim); return 1; }
    if (strcmp(k, "T") == 0 || strcmp(k, "mT") == 0) {
      ad_tensor **box = l_newbox(L);
      if (t->ndim < 2) { ad_tensor_retain(t); *box = t; return 1; }
      if (ad_transpose(box, t, t->ndim - 2, t->ndim - 1) != AD_OK) return l_error(L);
      return 1;
    }
    lua_pushnil(L);
    return 1;
  }
  if (lua_type(L, 2) == LUA_TNUMBER) {
    if (t->ndim == 0) return luaL_error(L, "cannot index a 0-d tensor (use item())");
    int64_t i = l_checkindex(L, 2, t->shape[0]);
    ad_tensor **box = l_newbox(L);
    if (ad_select(box, t, 0, i) != AD_OK) return l_error(L);
    return 1;
  }
  return luaL_error(L, "tensors are indexed by integers (x[i]) or method names, got %s", luaL_typename(L, 2));
}

static int l_newindex(lua_State *L) {
  ad_tensor *t = l_checktensor(L, 1);
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *k = lua_tostring(L, 2);
    if (strcmp(k, "requires_grad") == 0) {
      luaL_checktype(L, 3, LUA_TBOOLEAN);
      if (ad_set_requires_grad(t, lua_toboolean(L, 3)) != AD_OK) return l_error(L);
      return 0;
    }
    if (strcmp(k, "grad") == 0) {
      ad_tensor *g = l_opttensor(L, 3);
      if (g && !ad_shape_eq(g->ndim, g->shape, t->ndim, t->shape)) {
        char a[128], b[128];
        return luaL_error(L, "grad: assigned gradient has shape %s but the tensor has shape %s",
                          ad_shape_str(g->ndim, g->shape, a, sizeof a), ad_shape_str(t->ndim, t->shape, b, sizeof b));
      }
      if (g) ad_tensor_retain(g);
      ad_tensor_release(t->grad);
      t->grad = g;
      return 0;
    }
    return luaL_error(L, "cannot set field '%s' of a tensor (settable: requires_grad, grad)", k);
  }
  if (lua_type(L, 2) == LUA_TNUMBER) {
    if (t->ndim == 0) return luaL_error(L, "cannot index a 0-d tensor");
    int64_t i = l_checkindex(L, 2, t->shape[0]);
    ad_tensor *src = l_testtensor(L, 3);
    if (!src && lua_type(L, 3) != LUA_TNUMBER && lua_type(L, 3) != LUA_TBOOLEAN)
      return luaL_argerror(L, 3, "expected a tensor or a number");
    double v = src ? 0 : lua_type(L, 3) == LUA_TBOOLEAN ? lua_toboolean(L, 3) : lua_tonumber(L, 3);
    ad_tensor **box = l_newbox(L);
    bool prev = ad_set_grad_enabled(false);
    ad_status st = ad_select(box, t, 0, i);
    if (st == AD_OK) st = src ? ad_copy_(*box, src) : ad_fill_(*box, v);
    ad_set_grad_enabled(prev);
    if (st != AD_OK) return l_error(L);
    return 0;
  }
  return luaL_error(L, "tensors are indexed by integers, got %s", luaL_typename(L, 2));
}

static int l_len(lua_State *L) {
  ad_tensor *t = l_checktensor(L, 1);
  if (t->ndim == 0) return luaL_error(L, "len() of a 0-d tensor");
  lua_pushinteger(L, t->shape[0]);
  return 1;
}

/* x:copy_(src) and x:fill_(v): in place, not recorded */
static int l_copy_(lua_State *L) {
  ad_tensor *t = l_checktensor(L, 1);
  ad_tensor *s = l_checktensor(L, 2);
  if (ad_copy_(t, s) != AD_OK) return l_error(L);
  lua_settop(L, 1);
  return 1;
}
static int l_fill_(lua_State *L) {
  ad_tensor *t = l_checktensor(L, 1);
  double v = lua_isboolean(L, 2) ? lua_toboolean(L, 2) : luaL_checknumber(L, 2);
  if (ad_fill_(t, v) != AD_OK) return l_error(L);
  lua_settop(L, 1);
  return 1;
}
static int l_zero_(lua_State *L) {
  ad_tensor *t = l_checktensor(L, 1);
  if (ad_fill_(t, 0) != AD_OK) return l_error(L);
  lua_settop(L, 1);
  return 1;
}

static const luaL_Reg tensor_methods[] = {
  {"shape", l_shape}, {"size", l_size}, {"stride", l_stride}, {"dim", l_dim}, {"numel", l_numel},
  {"dtype", l_dtype}, {"device", l_device}, {"is_contiguous", l_is_contiguous},
  {"storage_offset", l_storage_offset}, {"nbytes", l_nbytes},
  {"item", l_item}, {"tolist", l_tolist}, {"_getflat", l_getflat}, {"_setflat", l_setflat},
  {"to", l_to}, {"float", l_float}, {"double", l_double}, {"half", l_half}, {"bfloat16", l_bfloat16},
  {"long", l_long}, {"int", l_int}, {"byte", l_byte}, {"bool", l_bool}, {"cpu", l_cpu}, {"cuda", l_cuda},
  {"copy_", l_copy_}, {"fill_", l_fill_}, {"zero_", l_zero_},
  {"free", l_release},
  {NULL, NULL},
};
static const luaL_Reg module_fns[] = {
  {"is_tensor", l_is_tensor},
  {NULL, NULL},
};

void l_register_tensor(lua_State *L, int mod, int methods) {
  l_setfuncs2(L, mod, methods, module_fns, tensor_methods);
  luaL_getmetatable(L, L_TENSOR);
  static const luaL_Reg meta[] = {
    {"__index", l_index}, {"__newindex", l_newindex}, {"__gc", l_release}, {"__close", l_release},
    {"__tostring", l_tostring}, {"__len", l_len}, {NULL, NULL},
  };
  luaL_setfuncs(L, meta, 0);
  lua_pop(L, 1);
}
