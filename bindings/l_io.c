/* l_io.c: ad.load / ad.save and the C side of ad.image.
 *
 * The core readers return an ad_doc (a C value tree); this file turns it into
 * Lua tables and back. The doc lives in a userdata box with a __gc while it is
 * converted, so a Lua error raised mid-way (out of memory, a bad key) frees it
 * instead of leaking it. Shared values (a pickle's memo, a Lua table that
 * appears twice) stay shared on both sides. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "../core/formats.h"
#include "lutil.h"

#define L_DOC "advdiff.Doc"
#define L_MAX_DEPTH 100

static int doc_gc(lua_State *L) {
  ad_doc **box = luaL_checkudata(L, 1, L_DOC);
  ad_doc_free(*box);
  *box = NULL;
  return 0;
}

/* [-0, +1, m] */
static ad_doc **newdocbox(lua_State *L) {
  ad_doc **box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  luaL_setmetatable(L, L_DOC);
  return box;
}

static ad_format checkformat(lua_State *L, int opts) {
  const char *f = l_optstr(L, opts, "format", NULL);
  if (!f) return AD_FMT_AUTO;
  if (!strcmp(f, "torch") || !strcmp(f, "pt") || !strcmp(f, "pth")) return AD_FMT_TORCH;
  if (!strcmp(f, "torch_legacy")) return AD_FMT_TORCH_LEGACY;
  if (!strcmp(f, "safetensors")) return AD_FMT_SAFETENSORS;
  if (!strcmp(f, "npy")) return AD_FMT_NPY;
  if (!strcmp(f, "npz")) return AD_FMT_NPZ;
  return (ad_format)luaL_error(L, "option 'format' must be \"torch\", \"torch_legacy\", \"safetensors\", \"npy\" or \"npz\", got \"%s\"", f);
}

/* ---- C values -> Lua ---- */
static void push_value(lua_State *L, const ad_value *v, int cache, int depth);

/* [-0, +1, e] a dict key as a Lua key; raises for keys Lua cannot hold */
static void push_key(lua_State *L, const ad_value *k, int cache, int depth) {
  switch (k->kind) {
  case AD_V_STR: case AD_V_BYTES: case AD_V_INT: case AD_V_BOOL:
    push_value(L, k, cache, depth);
    return;
  case AD_V_FLOAT:
    if (isnan(k->u.f)) luaL_error(L, "load: a dict key is NaN, which Lua tables cannot hold");
    push_value(L, k, cache, depth);
    return;
  default:
    luaL_error(L, "load: a dict key is a %s, which Lua tables cannot hold", ad_value_kind_name(k->kind));
  }
}

static void push_value(lua_State *L, const ad_value *v, int cache, int depth) {
  luaL_checkstack(L, 4, "load: values nested too deeply");
  switch (v->kind) {
  case AD_V_NONE: lua_pushnil(L); return;
  case AD_V_BOOL: lua_pushboolean(L, v->u.b); return;
  case AD_V_INT: lua_pushinteger(L, (lua_Integer)v->u.i); return;
  case AD_V_FLOAT: lua_pushnumber(L, v->u.f); return;
  case AD_V_STR: case AD_V_BYTES: lua_pushlstring(L, v->u.str.ptr, v->u.str.len); return;
  default: break;
  }
  /* containers and tensors: one Lua object per C value */
  if (lua_rawgetp(L, cache, v) != LUA_TNIL) return;
  lua_pop(L, 1);
  if (depth > L_MAX_DEPTH) luaL_error(L, "load: values nested deeper than %d levels", L_MAX_DEPTH);
  switch (v->kind) {
  case AD_V_TENSOR: {
    ad_tensor **box = l_newbox(L);
    ad_tensor_retain(v->u.tensor);
    *box = v->u.tensor;
    break;
  }
  case AD_V_LIST: case AD_V_TUPLE:
    lua_createtable(L, (int)(v->u.seq.n < 1u << 24 ? v->u.seq.n : 1u << 24), 0);
    for (size_t i = 0; i < v->u.seq.n; i++) {
      push_value(L, v->u.seq.items[i], cache, depth + 1);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    break;
  case AD_V_DICT:
    lua_createtable(L, 0, (int)(v->u.dict.n < 1u << 24 ? v->u.dict.n : 1u << 24));
    for (size_t i = 0; i < v->u.dict.n; i++) {
      push_key(L, v->u.dict.keys[i], cache, depth + 1);
      push_value(L, v->u.dict.vals[i], cache, depth + 1);
      lua_rawset(L, -3);   /* later keys win, as in Python */
    }
    break;
  default:
    luaL_error(L, "load: unexpected %s value", ad_value_kind_name(v->kind));
  }
  lua_pushvalue(L, -1);
  lua_rawsetp(L, cache, v);
}

/* [-0, +2, e] converts the loaded doc in *box (stack index boxi) into
 * value, info; frees the doc */
static int push_doc(lua_State *L, ad_doc **box, const char *name) {
  ad_value *root = ad_doc_root(*box);
  if (ad_value_check_tree(root, L_MAX_DEPTH) != AD_OK)
    return luaL_error(L, "load '%s': %s", name, ad_last_error());
  lua_newtable(L);   /* C value -> Lua object */
  int cache = lua_gettop(L);
  push_value(L, root, cache, 0);
  lua_createtable(L, 0, 3);        /* info */
  lua_pushstring(L, ad_format_name(ad_doc_format(*box)));
  lua_setfield(L, -2, "format");
  if (root->kind == AD_V_DICT) {
    lua_createtable(L, (int)(root->u.dict.n < 1u << 24 ? root->u.dict.n : 1u << 24), 0);
    for (size_t i = 0; i < root->u.dict.n; i++) {
      push_key(L, root->u.dict.keys[i], cache, 1);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "keys");
  }
  ad_value *meta = ad_doc_metadata(*box);
  if (meta) {
    push_value(L, meta, cache, 1);
    lua_setfield(L, -2, "metadata");
  }
  ad_doc_free(*box);   /* the Lua side now holds its own tensor references */
  *box = NULL;
  return 2;
}

static ad_load_opts load_opts(lua_State *L, int arg) {
  int opts = l_isopts(L, arg) ? arg : 0;
  if (!opts && !lua_isnoneornil(L, arg)) luaL_argerror(L, arg, "options table expected");
  ad_load_opts o = {0};
  o.format = checkformat(L, opts);
  o.no_mmap = !l_optbool(L, opts, "mmap", 1);
  o.verify_crc = l_optbool(L, opts, "verify", 0);
  o.populate = l_optbool(L, opts, "populate", 0);
  return o;
}

/* ad.load(path [, {format=, mmap=true, populate=false, verify=false}]) -> value, info
 * info = {format=, keys={top-level keys in file order}, metadata={...}} */
static int l_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  ad_load_opts o = load_opts(L, 2);
  lua_settop(L, 2);
  ad_doc **box = newdocbox(L);
  if (ad_load_file(box, path, &o) != AD_OK) return l_error(L);
  return push_doc(L, box, path);
}

/* ad._load_string(bytes [, {format=}]): the same from memory (tensors are
 * copied); for tests and fuzzing from Lua */
static int l_load_string(lua_State *L) {
  size_t n;
  const char *bytes = luaL_checklstring(L, 1, &n);
  ad_load_opts o = load_opts(L, 2);
  lua_settop(L, 2);
  ad_doc **box = newdocbox(L);
  /* the string stays on the stack (arg 1) while the loader reads it */
  if (ad_load_memory(box, bytes, n, "<string>", &o) != AD_OK) return l_error(L);
  return push_doc(L, box, "<string>");
}

/* ---- Lua values -> C values ---- */

/* natural order: digit runs compare as numbers ("blocks.2" < "blocks.10"),
 * so a saved state dict lists its layers in module order */
static int natural_cmp(const char *a, size_t na, const char *b, size_t nb) {
  size_t i = 0, j = 0;
  while (i < na && j < nb) {
    if (a[i] >= '0' && a[i] <= '9' && b[j] >= '0' && b[j] <= '9') {
      size_t i0 = i, j0 = j;
      while (i0 < na && a[i0] == '0') i0++;
      while (j0 < nb && b[j0] == '0') j0++;
      size_t ie = i0, je = j0;
      while (ie < na && a[ie] >= '0' && a[ie] <= '9') ie++;
      while (je < nb && b[je] >= '0' && b[je] <= '9') je++;
      if (ie - i0 != je - j0) return ie - i0 < je - j0 ? -1 : 1;
      int c = memcmp(a + i0, b + j0, ie - i0);
      if (c) return c;
      i = ie;
      j = je;
      continue;
    }
    if (a[i] != b[j]) return (unsigned char)a[i] < (unsigned char)b[j] ? -1 : 1;
    i++;
    j++;
  }
  return (i < na) - (j < nb);
}

static int key_rank(const ad_value *k) {
  switch (k->kind) {
  case AD_V_BOOL: return 0;
  case AD_V_INT: case AD_V_FLOAT: return 1;
  default: return 2;
  }
}

static int cmp_keys(const ad_value *a, const ad_value *b) {
  int ra = key_rank(a), rb = key_rank(b);
  if (ra != rb) return ra < rb ? -1 : 1;
  if (ra == 0) return (int)a->u.b - (int)b->u.b;
  if (ra == 1) {
    double x = a->kind == AD_V_INT ? (double)a->u.i : a->u.f, y = b->kind == AD_V_INT ? (double)b->u.i : b->u.f;
    if (a->kind == AD_V_INT && b->kind == AD_V_INT) return a->u.i < b->u.i ? -1 : a->u.i > b->u.i;
    return x < y ? -1 : x > y;
  }
  return natural_cmp(a->u.str.ptr, a->u.str.len, b->u.str.ptr, b->u.str.len);
}

/* insertion-friendly merge sort of the dict's (key, value) pairs by key */
static void sort_dict(ad_value *d, ad_value **tk, ad_value **tv, size_t lo, size_t hi) {
  if (hi - lo < 2) return;
  size_t mid = lo + (hi - lo) / 2;
  sort_dict(d, tk, tv, lo, mid);
  sort_dict(d, tk, tv, mid, hi);
  size_t i = lo, j = mid, k = lo;
  while (i < mid || j < hi) {
    bool left = j >= hi || (i < mid && cmp_keys(d->u.dict.keys[i], d->u.dict.keys[j]) <= 0);
    size_t s = left ? i++ : j++;
    tk[k] = d->u.dict.keys[s];
    tv[k++] = d->u.dict.vals[s];
  }
  memcpy(d->u.dict.keys + lo, tk + lo, (hi - lo) * sizeof *tk);
  memcpy(d->u.dict.vals + lo, tv + lo, (hi - lo) * sizeof *tv);
}

static int doc_oom(lua_State *L) { return luaL_error(L, "save: %s", ad_last_error()); }

/* [-0, +0, e] the Lua value at idx as a C value of doc. seen maps Lua tables
 * to their C value (false while the table is being converted: a cycle). */
static ad_value *to_value(lua_State *L, int idx, ad_doc *doc, int seen, int depth, const char *where) {
  idx = lua_absindex(L, idx);
  luaL_checkstack(L, 6, "save: tables nested too deeply");
  ad_value *v = NULL;
  switch (lua_type(L, idx)) {
  case LUA_TNIL: v = ad_value_none(doc); break;
  case LUA_TBOOLEAN: v = ad_value_bool(doc, lua_toboolean(L, idx)); break;
  case LUA_TNUMBER:
    v = lua_isinteger(L, idx) ? ad_value_int(doc, (int64_t)lua_tointeger(L, idx)) : ad_value_float(doc, lua_tonumber(L, idx));
    break;
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    v = ad_value_str(doc, s, n);
    break;
  }
  case LUA_TUSERDATA: {
    ad_tensor **box = luaL_testudata(L, idx, L_TENSOR);
    if (!box) luaL_error(L, "save: %s is a %s, which cannot be saved", where, luaL_typename(L, idx));
    if (!*box) luaL_error(L, "save: %s is a freed tensor", where);
    if (lua_rawgetp(L, seen, *box) == LUA_TLIGHTUSERDATA) { v = lua_touserdata(L, -1); lua_pop(L, 1); return v; }
    lua_pop(L, 1);
    v = ad_value_tensor(doc, *box);
    if (!v) doc_oom(L);
    lua_pushlightuserdata(L, v);
    lua_rawsetp(L, seen, *box);
    return v;
  }
  case LUA_TTABLE: {
    if (depth > L_MAX_DEPTH) luaL_error(L, "save: tables nested deeper than %d levels", L_MAX_DEPTH);
    int t = lua_rawgetp(L, seen, lua_topointer(L, idx));
    if (t == LUA_TBOOLEAN) luaL_error(L, "save: %s contains itself (a cycle cannot be saved)", where);
    if (t == LUA_TLIGHTUSERDATA) { v = lua_touserdata(L, -1); lua_pop(L, 1); return v; }
    lua_pop(L, 1);
    lua_pushboolean(L, 0);
    lua_rawsetp(L, seen, lua_topointer(L, idx));
    /* a sequence 1..n with nothing else is a list, anything else a dict */
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx), count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) { count++; lua_pop(L, 1); }
    bool is_list = n > 0 && count == n;
    v = is_list ? ad_value_list(doc) : ad_value_dict(doc);
    if (!v) doc_oom(L);
    char sub[160];
    if (is_list) {
      for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, i);
        snprintf(sub, sizeof sub, "%.120s[%lld]", where, (long long)i);
        ad_value *x = to_value(L, -1, doc, seen, depth + 1, sub);
        lua_pop(L, 1);
        if (ad_value_append(v, x) != AD_OK) doc_oom(L);
      }
    } else {
      lua_pushnil(L);
      while (lua_next(L, idx)) {
        int kt = lua_type(L, -2);
        if (kt == LUA_TSTRING) snprintf(sub, sizeof sub, "%.60s.%.90s", where, lua_tostring(L, -2));
        else if (kt == LUA_TNUMBER) snprintf(sub, sizeof sub, "%.120s[%g]", where, (double)lua_tonumber(L, -2));
        else snprintf(sub, sizeof sub, "%.120s[?]", where);
        if (kt != LUA_TSTRING && kt != LUA_TNUMBER && kt != LUA_TBOOLEAN)
          luaL_error(L, "save: %s has a %s key; keys must be strings, numbers or booleans", where, lua_typename(L, kt));
        ad_value *k = to_value(L, -2, doc, seen, depth + 1, sub);
        ad_value *x = to_value(L, -1, doc, seen, depth + 1, sub);
        lua_pop(L, 1);
        if (ad_value_dict_set(v, k, x) != AD_OK) doc_oom(L);
      }
      size_t nd = v->u.dict.n;
      if (nd > 1) {
        ad_value **tmp = lua_newuserdatauv(L, 2 * nd * sizeof *tmp, 0);   /* GC-owned scratch */
        sort_dict(v, tmp, tmp + nd, 0, nd);
        lua_pop(L, 1);
      }
    }
    lua_pushlightuserdata(L, v);
    lua_rawsetp(L, seen, lua_topointer(L, idx));
    return v;
  }
  default:
    luaL_error(L, "save: %s is a %s, which cannot be saved", where, luaL_typename(L, idx));
  }
  if (!v) doc_oom(L);
  return v;
}

/* ad.save(path, value [, {format=, compress=false, metadata={...}}]) */
static int l_save(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  luaL_checkany(L, 2);
  int opts = lua_isnoneornil(L, 3) ? 0 : 3;
  if (opts) luaL_checktype(L, 3, LUA_TTABLE);
  ad_save_opts o = {0};
  o.format = checkformat(L, opts);
  o.compress = l_optbool(L, opts, "compress", 0);
  lua_settop(L, 3);
  ad_doc **box = newdocbox(L);   /* 4 */
  *box = ad_doc_new();
  if (!*box) return l_error(L);
  lua_newtable(L);               /* 5: seen */
  ad_value *root = to_value(L, 2, *box, 5, 0, "value");
  if (opts && lua_getfield(L, opts, "metadata") != LUA_TNIL) {
    if (lua_type(L, -1) != LUA_TTABLE) return luaL_error(L, "save: option 'metadata' must be a table of strings");
    /* metadata values are strings in safetensors: numbers are turned into strings */
    lua_newtable(L);
    int mt = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, mt - 1)) {
      if (lua_type(L, -2) != LUA_TSTRING || (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER))
        return luaL_error(L, "save: option 'metadata' must map strings to strings");
      lua_pushvalue(L, -2);
      lua_pushstring(L, lua_tostring(L, -2));
      lua_rawset(L, mt);
      lua_pop(L, 1);
    }
    o.metadata = to_value(L, mt, *box, 5, 0, "metadata");
  }
  if (ad_save_file(path, root, &o) != AD_OK) return l_error(L);
  ad_doc_free(*box);
  *box = NULL;
  return 0;
}

/* ---- images ---- */
/* ad._image_load(path, channels, dtype) */
static int l_image_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int channels = (int)luaL_optinteger(L, 2, 0);
  ad_dtype dt = lua_isnoneornil(L, 3) ? AD_U8 : l_checkdtype(L, 3);
  ad_tensor **out = l_newbox(L);
  if (ad_image_load(out, path, channels, dt) != AD_OK) return l_error(L);
  return 1;
}

/* ad._image_decode(bytes, channels, dtype): the same from memory */
static int l_image_decode(lua_State *L) {
  size_t n;
  const char *bytes = luaL_checklstring(L, 1, &n);
  int channels = (int)luaL_optinteger(L, 2, 0);
  ad_dtype dt = lua_isnoneornil(L, 3) ? AD_U8 : l_checkdtype(L, 3);
  ad_tensor **out = l_newbox(L);
  if (ad_image_load_memory(out, bytes, n, channels, dt, "<string>") != AD_OK) return l_error(L);
  return 1;
}

/* ad._image_save(path, tensor, lo, hi) */
static int l_image_save(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  ad_tensor *t = l_checktensor(L, 2);
  double lo = luaL_optnumber(L, 3, 0.0), hi = luaL_optnumber(L, 4, 1.0);
  if (ad_image_save_png(path, t, lo, hi) != AD_OK) return l_error(L);
  return 0;
}

/* ad._image_grid(tensor, nrow, padding, pad_value, normalize, scale_each, lo, hi) */
static int l_image_grid(lua_State *L) {
  ad_tensor *t = l_checktensor(L, 1);
  ad_image_grid_args a = {0};
  a.nrow = (int)luaL_optinteger(L, 2, 8);
  a.padding = (int)luaL_optinteger(L, 3, 2);
  a.pad_value = luaL_optnumber(L, 4, 0.0);
  a.normalize = lua_toboolean(L, 5);
  a.scale_each = lua_toboolean(L, 6);
  if (!lua_isnoneornil(L, 7) || !lua_isnoneornil(L, 8)) {
    a.has_range = true;
    a.lo = luaL_checknumber(L, 7);
    a.hi = luaL_checknumber(L, 8);
  }
  ad_tensor **out = l_newbox(L);
  if (ad_image_grid(out, t, &a) != AD_OK) return l_error(L);
  return 1;
}

/* ad._now(): monotonic wall-clock seconds, for benchmarks (os.clock is CPU
 * time and misses I/O waits) */
static int l_now(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec * 1e-9);
  return 1;
}

static const luaL_Reg io_fns[] = {
  {"_now", l_now},
  {"load", l_load},
  {"save", l_save},
  {"_load_string", l_load_string},
  {"_image_load", l_image_load},
  {"_image_decode", l_image_decode},
  {"_image_save", l_image_save},
  {"_image_grid", l_image_grid},
  {NULL, NULL},
};

void l_register_io(lua_State *L, int mod, int methods) {
  mod = lua_absindex(L, mod);
  methods = lua_absindex(L, methods);
  if (luaL_newmetatable(L, L_DOC)) {
    lua_pushcfunction(L, doc_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, doc_gc);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  l_setfuncs2(L, mod, methods, io_fns, NULL);
}
