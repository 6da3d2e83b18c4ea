/* l_cuda.c: the CUDA device functions behind ad.cuda (lua/advdiff/cuda.lua
 * wraps these core._cuda_* entries) and the autocast scope ad.autocast.
 *
 * Without a CUDA build the same functions exist and answer as a machine
 * without a GPU does: is_available() is false, device_count() is 0, and the
 * calls that need a device raise "no CUDA device: ...".
 *
 *   ad.autocast("bf16", fn, ...)      runs fn(...) with autocast on, returns its results
 *   local s <close> = ad.autocast{dtype = "f16", enabled = true}   a scope; s:close() ends it
 *   ad.is_autocast_enabled(), ad.get_autocast_dtype() */
#include <string.h>
#include "lutil.h"
#include "../core/autocast.h"
#ifdef AD_HAVE_CUDA
#include "../core/cuda/ad_cuda.h"
#endif

#define L_AUTOCAST "advdiff.AutocastScope"

#ifndef AD_HAVE_CUDA
static bool tf32_flag;  /* remembered so the setting reads back the same */
#endif

/* [-0, +1, -] */
static int l_cuda_is_available(lua_State *L) {
#ifdef AD_HAVE_CUDA
  lua_pushboolean(L, ad_cuda_available());
#else
  lua_pushboolean(L, 0);
#endif
  return 1;
}

static int l_cuda_device_count(lua_State *L) {
#ifdef AD_HAVE_CUDA
  lua_pushinteger(L, ad_cuda_device_count());
#else
  lua_pushinteger(L, 0);
#endif
  return 1;
}

static int l_cuda_built(lua_State *L) {
#ifdef AD_HAVE_CUDA
  lua_pushboolean(L, 1);
#else
  lua_pushboolean(L, 0);
#endif
  return 1;
}

static const char *no_device_reason(void) {
#ifdef AD_HAVE_CUDA
  return ad_cuda_unavailable_reason();
#else
  return "this build of advdiff has no CUDA backend";
#endif
}

static int l_cuda_unavailable_reason(lua_State *L) {
  lua_pushstring(L, no_device_reason());
  return 1;
}

/* device argument: a 0-based CUDA ordinal, nil for 0 (or every device where said) */
#ifdef AD_HAVE_CUDA
static int check_ordinal(lua_State *L, int arg, int def) {
  if (lua_isnoneornil(L, arg)) return def;
  if (lua_type(L, arg) == LUA_TSTRING) {
    ad_device d = l_checkdevice(L, arg);
    if (d.type != AD_DEV_CUDA) luaL_argerror(L, arg, "a CUDA device expected (\"cuda\" or \"cuda:N\")");
    return d.index;
  }
  return (int)luaL_checkinteger(L, arg);
}
#endif

static int need_device(lua_State *L, const char *fn) {
#ifdef AD_HAVE_CUDA
  if (ad_cuda_available()) return 0;
#endif
  return luaL_error(L, "%s: no CUDA device: %s", fn, no_device_reason());
}

static int l_cuda_synchronize(lua_State *L) {
  need_device(L, "cuda.synchronize");
#ifdef AD_HAVE_CUDA
  int dev = check_ordinal(L, 1, -1);
  if (ad_cuda_synchronize(dev) != AD_OK) return l_error(L);
#endif
  return 0;
}

/* profiler(true|false): brackets a region for an external profiler */
static int l_cuda_profiler(lua_State *L) {
  luaL_checktype(L, 1, LUA_TBOOLEAN);
  need_device(L, "cuda.profiler");
#ifdef AD_HAVE_CUDA
  if (ad_cuda_profiler(lua_toboolean(L, 1)) != AD_OK) return l_error(L);
#endif
  return 0;
}

static int l_cuda_memory_stats(lua_State *L) {
  need_device(L, "cuda.memory_stats");
#ifdef AD_HAVE_CUDA
  int dev = check_ordinal(L, 1, 0);
  ad_cuda_memory_stats s;
  if (ad_cuda_memory_stats_get(&s, dev) != AD_OK) return l_error(L);
  lua_createtable(L, 0, 11);
  lua_pushinteger(L, s.allocated); lua_setfield(L, -2, "allocated");
  lua_pushinteger(L, s.reserved); lua_setfield(L, -2, "reserved");
  lua_pushinteger(L, s.peak_allocated); lua_setfield(L, -2, "peak");
  lua_pushinteger(L, s.peak_allocated); lua_setfield(L, -2, "peak_allocated");
  lua_pushinteger(L, s.peak_reserved); lua_setfield(L, -2, "peak_reserved");
  lua_pushinteger(L, s.requested); lua_setfield(L, -2, "requested");
  lua_pushinteger(L, s.num_cuda_malloc); lua_setfield(L, -2, "num_cuda_malloc");
  lua_pushinteger(L, s.num_cuda_free); lua_setfield(L, -2, "num_cuda_free");
  lua_pushinteger(L, s.num_alloc); lua_setfield(L, -2, "num_alloc");
  lua_pushinteger(L, s.num_cache_hits); lua_setfield(L, -2, "num_cache_hits");
  lua_pushinteger(L, s.num_oom_retries); lua_setfield(L, -2, "num_oom_retries");
  lua_pushinteger(L, s.num_segments); lua_setfield(L, -2, "num_segments");
#endif
  return 1;
}

static int l_cuda_reset_peak(lua_State *L) {
  need_device(L, "cuda.reset_peak_memory_stats");
#ifdef AD_HAVE_CUDA
  ad_cuda_reset_peak_memory(check_ordinal(L, 1, 0));
#endif
  return 0;
}

/* no device, nothing cached: a no-op, as in PyTorch */
static int l_cuda_empty_cache(lua_State *L) {
#ifdef AD_HAVE_CUDA
  if (ad_cuda_available() && ad_cuda_empty_cache() != AD_OK) return l_error(L);
#endif
  return 0;
}

/* allow_tf32() -> current; allow_tf32(bool) sets it and returns the previous value */
static int l_cuda_allow_tf32(lua_State *L) {
#ifdef AD_HAVE_CUDA
  bool prev = ad_cuda_get_allow_tf32();
  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TBOOLEAN);
    ad_cuda_set_allow_tf32(lua_toboolean(L, 1));
  }
#else
  bool prev = tf32_flag;
  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TBOOLEAN);
    tf32_flag = lua_toboolean(L, 1);
  }
#endif
  lua_pushboolean(L, prev);
  return 1;
}

static int l_cuda_device_name(lua_State *L) {
  need_device(L, "cuda.get_device_name");
#ifdef AD_HAVE_CUDA
  char buf[384];
  if (ad_cuda_device_name(check_ordinal(L, 1, 0), buf, sizeof buf) != AD_OK) return l_error(L);
  lua_pushstring(L, buf);
#endif
  return 1;
}

/* ---- autocast ---- */

typedef struct {
  ad_autocast_state prev;
  bool open;
} autocast_scope;

/* reads {dtype=, enabled=} or a dtype string at arg into *s; [-0, +0, v] */
static void autocast_args(lua_State *L, int arg, ad_autocast_state *s) {
  s->enabled = true;
  s->dtype = AD_BF16;
  if (lua_type(L, arg) == LUA_TSTRING) {
    s->dtype = l_checkdtype(L, arg);
  } else if (lua_istable(L, arg)) {
    s->dtype = l_optdtype(L, arg, "dtype", AD_BF16);
    s->enabled = l_optbool(L, arg, "enabled", 1);
  } else if (!lua_isnoneornil(L, arg)) {
    luaL_argerror(L, arg, "a dtype (\"bf16\" or \"f16\") or an options table {dtype=, enabled=} expected");
  }
  if (s->dtype != AD_BF16 && s->dtype != AD_F16)
    luaL_argerror(L, arg, lua_pushfstring(L, "autocast dtype must be bf16 or f16, got %s", ad_dtype_name(s->dtype)));
}

static int autocast_close(lua_State *L) {
  autocast_scope *sc = luaL_checkudata(L, 1, L_AUTOCAST);
  if (sc->open) {
    sc->open = false;
    ad_autocast_set(sc->prev, NULL);
  }
  return 0;
}

static int autocast_tostring(lua_State *L) {
  autocast_scope *sc = luaL_checkudata(L, 1, L_AUTOCAST);
  ad_autocast_state s = ad_autocast_get();
  lua_pushfstring(L, "AutocastScope(%s, %s)", sc->open ? "open" : "closed",
                  s.enabled ? ad_dtype_name(s.dtype) : "off");
  return 1;
}

/* ad.autocast(dtype_or_opts, fn, ...) -> fn's results; ad.autocast(dtype_or_opts) -> scope */
static int l_autocast(lua_State *L) {
  ad_autocast_state s, prev;
  autocast_args(L, 1, &s);
  if (lua_isfunction(L, 2)) {
    int base = 2, nargs = lua_gettop(L) - 2;
    if (ad_autocast_set(s, &prev) != AD_OK) return l_error(L);
    int rc = lua_pcall(L, nargs, LUA_MULTRET, 0);
    ad_autocast_set(prev, NULL);
    if (rc != LUA_OK) return lua_error(L);       /* re-raise the same error value */
    return lua_gettop(L) - base + 1;
  }
  if (!lua_isnoneornil(L, 2)) return luaL_argerror(L, 2, "a function expected (or nothing, for a scope)");
  autocast_scope *sc = lua_newuserdatauv(L, sizeof *sc, 0);   /* may raise: nothing changed yet */
  sc->open = false;
  luaL_setmetatable(L, L_AUTOCAST);
  if (ad_autocast_set(s, &sc->prev) != AD_OK) return l_error(L);
  sc->open = true;
  return 1;
}

static int l_is_autocast_enabled(lua_State *L) {
  lua_pushboolean(L, ad_autocast_get().enabled);
  return 1;
}

static int l_get_autocast_dtype(lua_State *L) {
  lua_pushstring(L, ad_dtype_name(ad_autocast_get().dtype));
  return 1;
}

static const luaL_Reg cuda_fns[] = {
  {"_cuda_is_available", l_cuda_is_available},
  {"_cuda_device_count", l_cuda_device_count},
  {"_cuda_built", l_cuda_built},
  {"_cuda_unavailable_reason", l_cuda_unavailable_reason},
  {"_cuda_synchronize", l_cuda_synchronize},
  {"_cuda_profiler", l_cuda_profiler},
  {"_cuda_memory_stats", l_cuda_memory_stats},
  {"_cuda_reset_peak_memory_stats", l_cuda_reset_peak},
  {"_cuda_empty_cache", l_cuda_empty_cache},
  {"_cuda_allow_tf32", l_cuda_allow_tf32},
  {"_cuda_get_device_name", l_cuda_device_name},
  {"autocast", l_autocast},
  {"is_autocast_enabled", l_is_autocast_enabled},
  {"get_autocast_dtype", l_get_autocast_dtype},
  {NULL, NULL},
};

static const luaL_Reg scope_methods[] = {
  {"close", autocast_close},
  {NULL, NULL},
};

void l_register_cuda(lua_State *L, int mod, int methods) {
  luaL_newmetatable(L, L_AUTOCAST);
  lua_newtable(L);
  luaL_setfuncs(L, scope_methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, autocast_close);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, autocast_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  l_setfuncs2(L, mod, methods, cuda_fns, NULL);
}
