/* lutil.c: argument checking and conversion shared by the binding files. */
#include <stdlib.h>
#include <string.h>
#include "lutil.h"

/* Lua's collector sees the 8-byte boxes, not the storages behind them, so a loop
 * that drops large tensors (on a GPU above all) can fill the device long before
 * Lua feels any pressure, and the caching allocator cannot free what dead boxes
 * still hold. So each new box looks at the bytes held by live storages: when they
 * have grown by half (and by 256 MiB) since the last collection, a full
 * collection runs first. Live memory that really grows costs one collection per
 * 1.5x; garbage is bounded by half the live memory plus 256 MiB. */
static int64_t gc_mark = -1;

static void gc_pressure(lua_State *L) {
  int64_t now = ad_memory_allocated(AD_DEV_CPU) + ad_memory_allocated(AD_DEV_CUDA);
  if (gc_mark < 0 || now < gc_mark) { gc_mark = now; return; }
  if (now - gc_mark > gc_mark / 2 + ((int64_t)256 << 20) && lua_gc(L, LUA_GCISRUNNING)) {
    lua_gc(L, LUA_GCCOLLECT);
    gc_mark = ad_memory_allocated(AD_DEV_CPU) + ad_memory_allocated(AD_DEV_CUDA);
  }
}

ad_tensor **l_newbox(lua_State *L) {
  gc_pressure(L);
  ad_tensor **box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  luaL_setmetatable(L, L_TENSOR);
  return box;
}

void l_pushtensor(lua_State *L, ad_tensor *t) {
  /* lua_newuserdatauv can raise on OOM: the reference would leak, which is
   * the lesser evil next to a dangling pointer; callers normally box first. */
  ad_tensor **box = l_newbox(L);
  *box = t;
}

ad_tensor *l_testtensor(lua_State *L, int arg) {
  ad_tensor **box = luaL_testudata(L, arg, L_TENSOR);
  return box ? *box : NULL;
}

ad_tensor *l_checktensor(lua_State *L, int arg) {
  ad_tensor **box = luaL_checkudata(L, arg, L_TENSOR);
  if (*box == NULL) luaL_argerror(L, arg, "tensor was freed");
  return *box;
}

ad_tensor *l_opttensor(lua_State *L, int arg) {
  if (lua_isnoneornil(L, arg)) return NULL;
  return l_checktensor(L, arg);
}

ad_tensor *l_checktensor_or_scalar(lua_State *L, int arg, const ad_tensor *like) {
  if (lua_type(L, arg) == LUA_TNUMBER || lua_type(L, arg) == LUA_TBOOLEAN) {
    double v = lua_type(L, arg) == LUA_TBOOLEAN ? lua_toboolean(L, arg) : lua_tonumber(L, arg);
    ad_dtype dt = like ? like->dtype : AD_F32;
    ad_device dev = like ? like->storage->device : AD_CPU;
    if (!ad_dtype_is_float(dt) && lua_isinteger(L, arg) == 0 && v != (double)(int64_t)v) dt = AD_F32;
    ad_tensor **box = l_newbox(L);
    if (ad_scalar_tensor(box, v, dt, dev) != AD_OK) l_error(L);
    return *box;
  }
  return l_checktensor(L, arg);
}

int l_todim(lua_State *L, lua_Integer d, int ndim, int arg) {
  int n = ndim > 0 ? ndim : 1;
  if (d >= 1 && d <= n) return (int)d - 1;
  if (d <= -1 && d >= -n) return (int)(n + d);
  if (arg > 0)
    return luaL_argerror(L, arg, lua_pushfstring(L, "dimension %d out of range for a %d-D tensor (expected 1..%d or -%d..-1)",
                                                 (int)d, ndim, n, n));
  return luaL_error(L, "dimension %d out of range for a %d-D tensor (expected 1..%d or -%d..-1)", (int)d, ndim, n, n);
}

int l_checkdim(lua_State *L, int arg, int ndim) {
  return l_todim(L, luaL_checkinteger(L, arg), ndim, arg);
}

int64_t l_checkindex(lua_State *L, int arg, int64_t n) {
  lua_Integer i = luaL_checkinteger(L, arg);
  if (i >= 1 && i <= n) return i - 1;
  if (i <= -1 && i >= -n) return n + i;
  luaL_argerror(L, arg, lua_pushfstring(L, "index %d out of range for size %d", (int)i, (int)n));
  return 0;
}

int l_checkshape(lua_State *L, int arg, int64_t *shape, int *next) {
  int n = 0;
  if (lua_istable(L, arg) && !l_testtensor(L, arg) && !l_isopts(L, arg)) {
    lua_Integer len = luaL_len(L, arg);
    if (len > AD_MAX_DIMS) luaL_argerror(L, arg, "too many dimensions");
    for (lua_Integer i = 1; i <= len; i++) {
      lua_geti(L, arg, i);
      int isnum;
      lua_Integer v = lua_tointegerx(L, -1, &isnum);
      if (!isnum) luaL_argerror(L, arg, "shape must be a list of integers");
      shape[n++] = v;
      lua_pop(L, 1);
    }
    if (next) *next = arg + 1;
    return n;
  }
  while (lua_type(L, arg + n) == LUA_TNUMBER) {
    if (n >= AD_MAX_DIMS) luaL_argerror(L, arg + n, "too many dimensions");
    int isnum;
    lua_Integer v = lua_tointegerx(L, arg + n, &isnum);
    if (!isnum) luaL_argerror(L, arg + n, "sizes must be integers");
    shape[n] = v;
    n++;
  }
  if (next) *next = arg + n;
  return n;
}

/* a table that looks like a shape/list (has [1]) is not an options table */
int l_isopts(lua_State *L, int arg) {
  if (lua_type(L, arg) != LUA_TTABLE) return 0;
  int t = lua_rawgeti(L, arg, 1);
  lua_pop(L, 1);
  return t == LUA_TNIL;
}

int l_checkdims(lua_State *L, int arg, int ndim, int *dims) {
  if (lua_isnoneornil(L, arg)) return 0;
  if (lua_type(L, arg) == LUA_TNUMBER) { dims[0] = l_checkdim(L, arg, ndim); return 1; }
  luaL_checktype(L, arg, LUA_TTABLE);
  lua_Integer len = luaL_len(L, arg);
  if (len > AD_MAX_DIMS) luaL_argerror(L, arg, "too many dimensions");
  for (lua_Integer i = 1; i <= len; i++) {
    lua_geti(L, arg, i);
    int isnum;
    lua_Integer d = lua_tointegerx(L, -1, &isnum);
    lua_pop(L, 1);
    if (!isnum) luaL_argerror(L, arg, "dims must be integers");
    dims[i - 1] = l_todim(L, d, ndim, arg);
    for (lua_Integer j = 1; j < i; j++)
      if (dims[j - 1] == dims[i - 1]) luaL_argerror(L, arg, "repeated dimension");
  }
  return (int)len;
}

static int getopt(lua_State *L, int opts, const char *name) {
  if (opts == 0 || lua_isnoneornil(L, opts)) return 0;
  if (lua_type(L, opts) != LUA_TTABLE) return 0;
  if (lua_getfield(L, opts, name) == LUA_TNIL) { lua_pop(L, 1); return 0; }
  return 1;
}

static int opterror(lua_State *L, const char *name, const char *what) {
  lua_Debug ar;
  const char *fn = "?";
  if (lua_getstack(L, 0, &ar)) { lua_getinfo(L, "n", &ar); if (ar.name) fn = ar.name; }
  return luaL_error(L, "%s: option '%s' must be %s, got %s", fn, name, what, luaL_typename(L, -1));
}

lua_Number l_optnum(lua_State *L, int opts, const char *name, lua_Number def) {
  if (!getopt(L, opts, name)) return def;
  if (lua_type(L, -1) != LUA_TNUMBER) opterror(L, name, "a number");
  lua_Number v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v;
}

lua_Integer l_optint(lua_State *L, int opts, const char *name, lua_Integer def) {
  if (!getopt(L, opts, name)) return def;
  int isnum;
  lua_Integer v = lua_tointegerx(L, -1, &isnum);
  if (!isnum || lua_type(L, -1) != LUA_TNUMBER) opterror(L, name, "an integer");
  lua_pop(L, 1);
  return v;
}

int l_optbool(lua_State *L, int opts, const char *name, int def) {
  if (!getopt(L, opts, name)) return def;
  if (lua_type(L, -1) != LUA_TBOOLEAN) opterror(L, name, "a boolean");
  int v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

const char *l_optstr(lua_State *L, int opts, const char *name, const char *def) {
  if (!getopt(L, opts, name)) return def;
  if (lua_type(L, -1) != LUA_TSTRING) opterror(L, name, "a string");
  const char *s = lua_tostring(L, -1);
  lua_pop(L, 1);   /* the string stays alive: the options table references it */
  return s;
}

ad_tensor *l_opttensorfield(lua_State *L, int opts, const char *name) {
  if (!getopt(L, opts, name)) return NULL;
  ad_tensor **box = luaL_testudata(L, -1, L_TENSOR);
  if (!box || !*box) opterror(L, name, "a tensor");
  lua_pop(L, 1);   /* the options table keeps the box alive */
  return *box;
}

ad_dtype l_checkdtype(lua_State *L, int arg) {
  const char *s = luaL_checkstring(L, arg);
  ad_dtype dt;
  if (ad_dtype_parse(&dt, s) != AD_OK) luaL_argerror(L, arg, ad_last_error());
  return dt;
}

ad_dtype l_optdtype(lua_State *L, int opts, const char *name, ad_dtype def) {
  if (!getopt(L, opts, name)) return def;
  if (lua_type(L, -1) != LUA_TSTRING) opterror(L, name, "a dtype name (\"f32\", \"f64\", ...)");
  ad_dtype dt;
  if (ad_dtype_parse(&dt, lua_tostring(L, -1)) != AD_OK) l_error(L);
  lua_pop(L, 1);
  return dt;
}

static int parse_device(const char *s, ad_device *dev) {
  if (strcmp(s, "cpu") == 0) { *dev = AD_CPU; return 1; }
  if (strncmp(s, "cuda", 4) == 0) {
    dev->type = AD_DEV_CUDA;
    dev->index = 0;
    if (s[4] == ':') {
      char *end;
      long i = strtol(s + 5, &end, 10);
      if (*end || i < 0) return 0;
      dev->index = (int)i;
    } else if (s[4]) return 0;
    return 1;
  }
  return 0;
}

ad_device l_checkdevice(lua_State *L, int arg) {
  const char *s = luaL_checkstring(L, arg);
  ad_device dev;
  if (!parse_device(s, &dev)) luaL_argerror(L, arg, lua_pushfstring(L, "unknown device '%s' (expected \"cpu\", \"cuda\" or \"cuda:N\")", s));
  return dev;
}

ad_device l_optdevice(lua_State *L, int opts, const char *name, ad_device def) {
  if (!getopt(L, opts, name)) return def;
  ad_device dev;
  if (lua_type(L, -1) != LUA_TSTRING) opterror(L, name, "a device (\"cpu\", \"cuda\" or \"cuda:N\")");
  if (!parse_device(lua_tostring(L, -1), &dev))
    luaL_error(L, "option '%s': unknown device '%s' (expected \"cpu\", \"cuda\" or \"cuda:N\")", name, lua_tostring(L, -1));
  lua_pop(L, 1);
  return dev;
}

void l_optpair(lua_State *L, int opts, const char *name, int def, int out[2]) {
  out[0] = out[1] = def;
  if (!getopt(L, opts, name)) return;
  if (lua_type(L, -1) == LUA_TNUMBER) {
    out[0] = out[1] = (int)lua_tointeger(L, -1);
  } else if (lua_type(L, -1) == LUA_TTABLE && luaL_len(L, -1) == 2) {
    lua_geti(L, -1, 1); out[0] = (int)lua_tointeger(L, -1); lua_pop(L, 1);
    lua_geti(L, -1, 2); out[1] = (int)lua_tointeger(L, -1); lua_pop(L, 1);
  } else {
    opterror(L, name, "a number or a pair {h, w}");
  }
  lua_pop(L, 1);
}

ad_generator *l_optgenerator(lua_State *L, int opts, const char *name) {
  if (!getopt(L, opts, name)) return ad_default_generator();
  ad_generator *g = luaL_testudata(L, -1, L_GENERATOR);
  if (!g) opterror(L, name, "an ad.Generator");
  lua_pop(L, 1);
  return g;
}

int l_error(lua_State *L) { return luaL_error(L, "%s", ad_last_error()); }

void l_setfuncs2(lua_State *L, int mod, int methods, const luaL_Reg *fns, const luaL_Reg *meths) {
  mod = lua_absindex(L, mod);
  methods = lua_absindex(L, methods);
  if (fns) for (; fns->name; fns++) { lua_pushcfunction(L, fns->func); lua_setfield(L, mod, fns->name); }
  if (meths) for (; meths->name; meths++) { lua_pushcfunction(L, meths->func); lua_setfield(L, methods, meths->name); }
}
