/* l_data.c: Lua bindings of the C data loader (core/data/loader.h) and of the
 * readers the datasets use. The engine of ad.data (lua/advdiff/data/), which
 * is what users call.
 *
 *   ad._loader_new(opts) -> loader      opts: either paths = {"a.png", ...}, or images = u8 tensor
 *       (N, H, W, C) | (N, C, H, W) | (N, H, W) with hwc = true|false and rows = {0-based rows} (or nil);
 *       labels = {integers} (or nil); batch_size, shuffle, drop_last, seed, num_workers, prefetch,
 *       channels, height, width, resize ("none"|"center"|"crop"|"stretch"), pad, pad_value,
 *       hflip, out ("sym"|"unit"|"u8"), on_error ("skip"|"error")
 *   loader:next() -> x, y|nil, items (0-based, i64), position
 *   loader:seek(s), loader:position(), loader:batches_per_epoch(), loader:num_items(),
 *   loader:bad_items(), loader:warnings() -> {strings}, loader:epoch_order(e) -> {0-based items},
 *   loader:close() (also __gc / __close)
 *   ad._read_idx(path) -> tensor
 *   ad._fsync(path)             fsync a file or directory
 *   ad._isatty(fd)              is file descriptor fd a terminal
 *   ad._listdir(path) -> {{name=, dir=bool}, ...} in directory order, without . and ..;
 *       nil, message when the directory cannot be read */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "lutil.h"
#include "../core/data/loader.h"

#define L_LOADER "advdiff.Loader"

static ad_loader *check_loader(lua_State *L, int arg) {
  ad_loader **box = luaL_checkudata(L, arg, L_LOADER);
  if (!*box) luaL_argerror(L, arg, "the loader was closed");
  return *box;
}

static int l_loader_gc(lua_State *L) {
  ad_loader **box = luaL_checkudata(L, 1, L_LOADER);
  ad_loader_free(*box);
  *box = NULL;
  return 0;
}

/* [-0, +1, m] an int64 array from a Lua list (or an integer tensor) at field
 * `name` of opts; NULL when absent. The array lives in a userdata left on the
 * stack. want: required length or -1; *n receives the length. */
static int64_t *opt_int_list(lua_State *L, int opts, const char *name, int64_t want, int64_t *n) {
  lua_getfield(L, opts, name);
  int idx = lua_gettop(L);
  if (lua_isnil(L, idx)) { lua_pop(L, 1); return NULL; }
  ad_tensor *t = l_testtensor(L, idx);
  int64_t len;
  if (t) {
    if (t->ndim != 1 || ad_dtype_is_float(t->dtype) || t->storage->device.type != AD_DEV_CPU)
      luaL_error(L, "_loader_new: '%s' must be a 1-D integer CPU tensor or a list of integers", name);
    len = t->shape[0];
  } else {
    if (!lua_istable(L, idx)) luaL_error(L, "_loader_new: '%s' must be a list of integers", name);
    len = (int64_t)luaL_len(L, idx);
  }
  if (want >= 0 && len != want)
    luaL_error(L, "_loader_new: '%s' has %d entries, expected %d (one per item)", name, (int)len, (int)want);
  int64_t *arr = lua_newuserdatauv(L, sizeof *arr * (size_t)(len ? len : 1), 0);
  for (int64_t i = 0; i < len; i++) {
    if (t) { arr[i] = (int64_t)ad_get_flat(t, i); continue; }
    lua_geti(L, idx, (lua_Integer)i + 1);
    int isnum;
    lua_Integer v = lua_tointegerx(L, -1, &isnum);
    if (!isnum) luaL_error(L, "_loader_new: '%s'[%d] must be an integer", name, (int)i + 1);
    arr[i] = v;
    lua_pop(L, 1);
  }
  lua_remove(L, idx);   /* keep the array userdata, drop the list */
  *n = len;
  return arr;
}

static int check_enum(lua_State *L, int opts, const char *name, const char *def, const char *const *names) {
  const char *s = l_optstr(L, opts, name, def);
  for (int i = 0; names[i]; i++)
    if (strcmp(s, names[i]) == 0) return i;
  return luaL_error(L, "_loader_new: option '%s' must be one of %s%s%s%s, got '%s'", name, names[0],
                    names[1] ? ", " : "", names[1] ? names[1] : "", names[2] ? ", ..." : "", s);
}

static int l_loader_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  static const char *const resize_names[] = {"none", "center", "crop", "stretch", NULL};
  static const char *const out_names[] = {"sym", "unit", "u8", NULL};
  static const char *const err_names[] = {"skip", "error", NULL};
  ad_loader_opts o;
  memset(&o, 0, sizeof o);
  o.batch_size = l_optint(L, 1, "batch_size", 1);
  o.shuffle = l_optbool(L, 1, "shuffle", 0);
  o.drop_last = l_optbool(L, 1, "drop_last", 0);
  o.seed = (uint64_t)l_optint(L, 1, "seed", 0);
  o.num_workers = (int)l_optint(L, 1, "num_workers", 1);
  o.prefetch = (int)l_optint(L, 1, "prefetch", 2);
  o.channels = (int)l_optint(L, 1, "channels", 0);
  o.height = (int)l_optint(L, 1, "height", 0);
  o.width = (int)l_optint(L, 1, "width", 0);
  o.resize = (ad_resize_mode)check_enum(L, 1, "resize", "none", resize_names);
  o.pad = (int)l_optint(L, 1, "pad", 0);
  o.pad_value = l_optnum(L, 1, "pad_value", 0);
  o.hflip = l_optbool(L, 1, "hflip", 0);
  o.out = (ad_loader_out)check_enum(L, 1, "out", "sym", out_names);
  o.error_on_bad = check_enum(L, 1, "on_error", "skip", err_names) == 1;

  int64_t n = 0, nl = 0, nr = 0;
  lua_getfield(L, 1, "paths");
  int paths_idx = lua_gettop(L);
  ad_tensor *images = l_opttensorfield(L, 1, "images");
  if (lua_isnil(L, paths_idx) == (images == NULL))
    return luaL_error(L, "_loader_new: give exactly one of 'paths' (a list of files) or 'images' (a u8 tensor)");
  const char **paths = NULL;
  if (images == NULL) {
    luaL_checktype(L, paths_idx, LUA_TTABLE);
    n = (int64_t)luaL_len(L, paths_idx);
    paths = lua_newuserdatauv(L, sizeof *paths * (size_t)(n ? n : 1), 0);
    for (int64_t i = 0; i < n; i++) {
      lua_geti(L, paths_idx, (lua_Integer)i + 1);
      if (lua_type(L, -1) != LUA_TSTRING) return luaL_error(L, "_loader_new: paths[%d] must be a string", (int)i + 1);
      paths[i] = lua_tostring(L, -1);   /* stays valid: the string is held by the paths table */
      lua_pop(L, 1);
    }
  }
  int hwc = l_optbool(L, 1, "hwc", 1);
  const int64_t *rows = images ? opt_int_list(L, 1, "rows", -1, &nr) : NULL;
  if (images) n = rows ? nr : images->shape[0];
  const int64_t *labels = opt_int_list(L, 1, "labels", n, &nl);

  ad_loader **box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  luaL_setmetatable(L, L_LOADER);
  ad_status st = images ? ad_loader_new_array(box, images, hwc, rows, labels, n, &o)
                        : ad_loader_new_files(box, paths, labels, n, &o);
  if (st != AD_OK) return l_error(L);
  return 1;
}

static int l_loader_next(lua_State *L) {
  ad_loader *l = check_loader(L, 1);
  ad_tensor **x = l_newbox(L), **y = l_newbox(L), **items = l_newbox(L);
  int64_t pos = 0;
  if (ad_loader_next(l, x, y, items, &pos) != AD_OK) return l_error(L);
  if (!*y) { lua_pushnil(L); lua_replace(L, -3); }
  lua_pushinteger(L, (lua_Integer)pos);
  return 4;
}

static int l_loader_seek(lua_State *L) {
  ad_loader *l = check_loader(L, 1);
  lua_Integer s = luaL_checkinteger(L, 2);
  if (ad_loader_seek(l, (int64_t)s) != AD_OK) return l_error(L);
  return 0;
}

static int l_loader_position(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)ad_loader_position(check_loader(L, 1)));
  return 1;
}
static int l_loader_bpe(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)ad_loader_batches_per_epoch(check_loader(L, 1)));
  return 1;
}
static int l_loader_num_items(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)ad_loader_num_items(check_loader(L, 1)));
  return 1;
}
static int l_loader_bad_items(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)ad_loader_bad_items(check_loader(L, 1)));
  return 1;
}
static int l_loader_warnings(lua_State *L) {
  ad_loader *l = check_loader(L, 1);
  char buf[1200];
  lua_newtable(L);
  int i = 0;
  while (ad_loader_pop_warning(l, buf, sizeof buf)) {
    lua_pushstring(L, buf);
    lua_rawseti(L, -2, ++i);
  }
  return 1;
}
static int l_loader_epoch_order(lua_State *L) {
  ad_loader *l = check_loader(L, 1);
  lua_Integer e = luaL_checkinteger(L, 2);
  int64_t n = ad_loader_num_items(l);
  int64_t *perm = lua_newuserdatauv(L, sizeof *perm * (size_t)n, 0);
  if (ad_loader_epoch_order(l, (int64_t)e, perm) != AD_OK) return l_error(L);
  lua_createtable(L, (int)n, 0);
  for (int64_t i = 0; i < n; i++) {
    lua_pushinteger(L, (lua_Integer)perm[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* ad._data_order(n, seed, epoch, shuffle) -> {0-based items}; ad._data_flips(seed, epoch, {items}) -> {bools} */
static int l_data_order(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1), seed = luaL_checkinteger(L, 2), e = luaL_checkinteger(L, 3);
  int shuffle = lua_toboolean(L, 4);
  if (n < 0 || n > (1 << 30)) return luaL_argerror(L, 1, "item count out of range");
  if (e < 0) return luaL_argerror(L, 3, "epoch must be >= 0");
  int64_t *perm = lua_newuserdatauv(L, sizeof *perm * (size_t)(n ? n : 1), 0);
  ad_data_permutation(perm, (int64_t)n, (uint64_t)seed, (int64_t)e, shuffle);
  lua_createtable(L, (int)n, 0);
  for (lua_Integer i = 0; i < n; i++) {
    lua_pushinteger(L, (lua_Integer)perm[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}
static int l_data_flips(lua_State *L) {
  lua_Integer seed = luaL_checkinteger(L, 1), e = luaL_checkinteger(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  lua_Integer n = luaL_len(L, 3);
  lua_createtable(L, (int)n, 0);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 3, i);
    lua_Integer it = luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    lua_pushboolean(L, ad_data_flip((uint64_t)seed, (int64_t)e, (int64_t)it));
    lua_rawseti(L, -2, i);
  }
  return 1;
}

static int l_read_idx(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  ad_tensor **box = l_newbox(L);
  if (ad_read_idx(box, path) != AD_OK) return l_error(L);
  return 1;
}

/* ad._isatty(fd) -> boolean: for progress lines (a terminal gets a redrawn line) */
static int l_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

static int l_fsync(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  if (ad_fsync_path(path) != AD_OK) return l_error(L);
  return 0;
}

#define L_DIR "advdiff.Dir"

/* the directory handle lives in a userdata whose __gc closes it, so a Lua
 * error (out of memory pushing a name) cannot leak it (liolib's pattern) */
static int l_dir_gc(lua_State *L) {
  DIR **box = luaL_checkudata(L, 1, L_DIR);
  if (*box) closedir(*box);
  *box = NULL;
  return 0;
}

static int l_listdir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  DIR **box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  luaL_setmetatable(L, L_DIR);
  if (!(*box = opendir(path))) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot list '%s': %s", path, strerror(errno));
    return 2;
  }
  lua_newtable(L);
  lua_Integer i = 0;
  size_t plen = strlen(path);
  struct dirent *e;
  while ((e = readdir(*box)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    lua_createtable(L, 0, 2);
    lua_pushstring(L, e->d_name);
    lua_setfield(L, -2, "name");
    if (plen > 0 && path[plen - 1] == '/') lua_pushfstring(L, "%s%s", path, e->d_name);
    else lua_pushfstring(L, "%s/%s", path, e->d_name);
    struct stat sb;
    lua_pushboolean(L, stat(lua_tostring(L, -1), &sb) == 0 && S_ISDIR(sb.st_mode));
    lua_setfield(L, -3, "dir");
    lua_pop(L, 1);
    lua_rawseti(L, -2, ++i);
  }
  closedir(*box);
  *box = NULL;
  return 1;
}

static const luaL_Reg loader_methods[] = {
  {"next", l_loader_next},
  {"seek", l_loader_seek},
  {"position", l_loader_position},
  {"batches_per_epoch", l_loader_bpe},
  {"num_items", l_loader_num_items},
  {"bad_items", l_loader_bad_items},
  {"warnings", l_loader_warnings},
  {"epoch_order", l_loader_epoch_order},
  {"close", l_loader_gc},
  {NULL, NULL},
};

static const luaL_Reg data_fns[] = {
  {"_loader_new", l_loader_new},
  {"_read_idx", l_read_idx},
  {"_data_order", l_data_order},
  {"_data_flips", l_data_flips},
  {"_fsync", l_fsync},
  {"_listdir", l_listdir},
  {"_isatty", l_isatty},
  {NULL, NULL},
};

void l_register_data(lua_State *L, int mod, int methods) {
  luaL_newmetatable(L, L_DIR);
  lua_pushcfunction(L, l_dir_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_newmetatable(L, L_LOADER);
  lua_newtable(L);
  luaL_setfuncs(L, loader_methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_loader_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, l_loader_gc);
  lua_setfield(L, -2, "__close");
  lua_pushliteral(L, "advdiff.Loader");
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
  l_setfuncs2(L, mod, methods, data_fns, NULL);
}
