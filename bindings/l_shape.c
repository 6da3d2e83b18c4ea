/* l_shape.c: bindings of views and shape ops. Positions and dims are 1-based
 * (negative from the end); l_checkdim / l_checkindex convert them. */
#include <stdlib.h>
#include "lutil.h"

static void check_sizes_arg(lua_State *L, int arg) {
  if (lua_type(L, arg) != LUA_TNUMBER && lua_type(L, arg) != LUA_TTABLE)
    luaL_typeerror(L, arg, "sizes or a shape table");
}
static int l_view(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  check_sizes_arg(L, 2);
  int64_t shape[AD_MAX_DIMS];
  int n = l_checkshape(L, 2, shape, NULL);
  ad_tensor **box = l_newbox(L);
  if (ad_view(box, x, n, shape) != AD_OK) return l_error(L);
  return 1;
}
static int l_reshape(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  check_sizes_arg(L, 2);
  int64_t shape[AD_MAX_DIMS];
  int n = l_checkshape(L, 2, shape, NULL);
  ad_tensor **box = l_newbox(L);
  if (ad_reshape(box, x, n, shape) != AD_OK) return l_error(L);
  return 1;
}
static int l_view_as(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1), *o = l_checktensor(L, 2);
  ad_tensor **box = l_newbox(L);
  if (ad_view(box, x, o->ndim, o->shape) != AD_OK) return l_error(L);
  return 1;
}
static int l_reshape_as(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1), *o = l_checktensor(L, 2);
  ad_tensor **box = l_newbox(L);
  if (ad_reshape(box, x, o->ndim, o->shape) != AD_OK) return l_error(L);
  return 1;
}
static int l_permute(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  int perm[AD_MAX_DIMS];
  int n;
  if (lua_istable(L, 2)) n = l_checkdims(L, 2, x->ndim, perm);
  else { n = lua_gettop(L) - 1; for (int i = 0; i < n && i < AD_MAX_DIMS; i++) perm[i] = l_checkdim(L, i + 2, x->ndim); }
  if (n != x->ndim) return luaL_error(L, "permute: expected %d dims for a %d-D tensor, got %d", x->ndim, x->ndim, n);
  ad_tensor **box = l_newbox(L);
  if (ad_permute(box, x, perm) != AD_OK) return l_error(L);
  return 1;
}
static int l_transpose(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  int a = l_checkdim(L, 2, x->ndim), b = l_checkdim(L, 3, x->ndim);
  ad_tensor **box = l_newbox(L);
  if (ad_transpose(box, x, a, b) != AD_OK) return l_error(L);
  return 1;
}
static int l_t(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  if (x->ndim > 2) return luaL_error(L, "t: expects a tensor with at most 2 dimensions, got %d-D (use transpose)", x->ndim);
  ad_tensor **box = l_newbox(L);
  if (x->ndim < 2) { ad_tensor_retain(x); *box = x; return 1; }
  if (ad_transpose(box, x, 0, 1) != AD_OK) return l_error(L);
  return 1;
}
/* narrow(dim, start, length): start is 1-based */
static int l_narrow(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  int d = l_checkdim(L, 2, x->ndim);
  int64_t start = l_checkindex(L, 3, x->shape[d] + 1);  /* start may be size+1 when length 0 */
  lua_Integer len = luaL_checkinteger(L, 4);
  ad_tensor **box = l_newbox(L);
  if (ad_narrow(box, x, d, start, len) != AD_OK) return l_error(L);
  return 1;
}
/* slice(dim, first, last, step): Lua-style inclusive range like string.sub;
 * negative positions count from the end; last defaults to -1 */
static int l_slice(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  int d = l_checkdim(L, 2, x->ndim);
  int64_t n = x->shape[d];
  lua_Integer first = luaL_optinteger(L, 3, 1), last = luaL_optinteger(L, 4, -1), step = luaL_optinteger(L, 5, 1);
  if (step <= 0) return luaL_argerror(L, 5, "step must be positive");
  if (first < 0) first += n + 1;
  if (last < 0) last += n + 1;
  if (first < 1) first = 1;
  if (last > n) last = n;
  int64_t start = first - 1, stop = last < first ? start : last;
  if (start > n) start = stop = n;
  ad_tensor **box = l_newbox(L);
  if (ad_slice(box, x, d, start, stop, step) != AD_OK) return l_error(L);
  return 1;
}
static int l_select(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  int d = l_checkdim(L, 2, x->ndim);
  int64_t i = l_checkindex(L, 3, x->shape[d]);
  ad_tensor **box = l_newbox(L);
  if (ad_select(box, x, d, i) != AD_OK) return l_error(L);
  return 1;
}
static int l_expand(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  check_sizes_arg(L, 2);
  int64_t shape[AD_MAX_DIMS];
  int n = l_checkshape(L, 2, shape, NULL);
  ad_tensor **box = l_newbox(L);
  if (ad_expand(box, x, n, shape) != AD_OK) return l_error(L);
  return 1;
}
static int l_expand_as(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1), *o = l_checktensor(L, 2);
  ad_tensor **box = l_newbox(L);
  if (ad_expand(box, x, o->ndim, o->shape) != AD_OK) return l_error(L);
  return 1;
}
static int l_squeeze(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  int d = lua_isnoneornil(L, 2) ? -1 : l_checkdim(L, 2, x->ndim);
  ad_tensor **box = l_newbox(L);
  if (ad_squeeze(box, x, d) != AD_OK) return l_error(L);
  return 1;
}
static int l_unsqueeze(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  int d = l_todim(L, luaL_checkinteger(L, 2), x->ndim + 1, 2);
  ad_tensor **box = l_newbox(L);
  if (ad_unsqueeze(box, x, d) != AD_OK) return l_error(L);
  return 1;
}
static int l_flatten(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  int s = lua_isnoneornil(L, 2) ? 0 : l_checkdim(L, 2, x->ndim);
  int e = lua_isnoneornil(L, 3) ? (x->ndim ? x->ndim - 1 : 0) : l_checkdim(L, 3, x->ndim);
  ad_tensor **box = l_newbox(L);
  if (ad_flatten(box, x, s, e) != AD_OK) return l_error(L);
  return 1;
}
static int l_contiguous(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  ad_tensor **box = l_newbox(L);
  if (ad_contiguous(box, x) != AD_OK) return l_error(L);
  return 1;
}
static int l_clone(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  ad_tensor **box = l_newbox(L);
  if (ad_clone(box, x) != AD_OK) return l_error(L);
  return 1;
}

/* pieces come back as multiple return values: local q, k, v = x:chunk(3, 2) */
static int push_pieces(lua_State *L, int first_box, int n) {
  lua_settop(L, first_box + n - 1);
  return n;
}
static int l_chunk(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  lua_Integer chunks = luaL_checkinteger(L, 2);
  int d = lua_isnoneornil(L, 3) ? 0 : l_checkdim(L, 3, x->ndim);
  if (x->ndim == 0) return luaL_error(L, "chunk: cannot chunk a 0-d tensor");
  if (chunks <= 0 || chunks > 100000) return luaL_argerror(L, 2, "number of chunks must be in 1..100000");
  int64_t len = x->shape[d], size = (len + chunks - 1) / chunks;
  int n = size == 0 ? 1 : (int)((len + size - 1) / size);
  if (len == 0) n = 1;
  luaL_checkstack(L, n + 2, "chunk");
  int top = lua_gettop(L);
  ad_tensor **outs = lua_newuserdatauv(L, sizeof(ad_tensor *) * (size_t)n, 0); /* scratch, GC'd */
  for (int i = 0; i < n; i++) l_newbox(L);
  int got = 0;
  if (ad_chunk(outs, &got, x, (int)chunks, d) != AD_OK) return l_error(L);
  for (int i = 0; i < got; i++) *(ad_tensor **)lua_touserdata(L, top + 2 + i) = outs[i];
  lua_remove(L, top + 1);
  return push_pieces(L, top + 1, got);
}
static int l_split(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  int d = lua_isnoneornil(L, 3) ? 0 : l_checkdim(L, 3, x->ndim);
  if (x->ndim == 0) return luaL_error(L, "split: cannot split a 0-d tensor");
  int64_t sizes[4096];
  int n;
  if (lua_istable(L, 2)) {
    lua_Integer len = luaL_len(L, 2);
    if (len < 1 || len > 4096) return luaL_argerror(L, 2, "expected 1..4096 sizes");
    n = (int)len;
    for (int i = 0; i < n; i++) { lua_geti(L, 2, i + 1); sizes[i] = lua_tointeger(L, -1); lua_pop(L, 1); }
  } else {
    lua_Integer s = luaL_checkinteger(L, 2);
    if (s <= 0) return luaL_argerror(L, 2, "split size must be positive");
    int64_t len = x->shape[d];
    n = len == 0 ? 1 : (int)((len + s - 1) / s);
    if (n > 4096) return luaL_argerror(L, 2, "too many pieces (more than 4096)");
    for (int i = 0; i < n; i++) sizes[i] = (i + 1) * s <= len ? s : len - i * s;
  }
  luaL_checkstack(L, n + 2, "split");
  int top = lua_gettop(L);
  ad_tensor **outs = lua_newuserdatauv(L, sizeof(ad_tensor *) * (size_t)n, 0);
  for (int i = 0; i < n; i++) l_newbox(L);
  if (ad_split_sizes(outs, x, n, sizes, d) != AD_OK) return l_error(L);
  for (int i = 0; i < n; i++) *(ad_tensor **)lua_touserdata(L, top + 2 + i) = outs[i];
  lua_remove(L, top + 1);
  return push_pieces(L, top + 1, n);
}

/* list of tensors from a table at arg; returns a scratch array kept on the stack */
static ad_tensor **check_tensor_list(lua_State *L, int arg, int *n) {
  luaL_checktype(L, arg, LUA_TTABLE);
  lua_Integer len = luaL_len(L, arg);
  if (len < 1) luaL_argerror(L, arg, "expected a non-empty list of tensors");
  ad_tensor **xs = lua_newuserdatauv(L, sizeof(ad_tensor *) * (size_t)len, 0);
  for (lua_Integer i = 1; i <= len; i++) {
    lua_geti(L, arg, i);
    ad_tensor *t = l_testtensor(L, -1);
    if (!t) luaL_argerror(L, arg, lua_pushfstring(L, "element %d is not a tensor", (int)i));
    xs[i - 1] = t;     /* the table keeps it alive */
    lua_pop(L, 1);
  }
  *n = (int)len;
  return xs;
}
static int l_cat(lua_State *L) {
  int n;
  lua_settop(L, 2);   /* the scratch list goes above the arguments */
  ad_tensor **xs = check_tensor_list(L, 1, &n);
  int d = lua_isnoneornil(L, 2) ? 0 : l_checkdim(L, 2, xs[0]->ndim);
  ad_tensor **box = l_newbox(L);
  if (ad_cat(box, xs, n, d) != AD_OK) return l_error(L);
  return 1;
}
static int l_stack(lua_State *L) {
  int n;
  lua_settop(L, 2);
  ad_tensor **xs = check_tensor_list(L, 1, &n);
  int d = lua_isnoneornil(L, 2) ? 0 : l_todim(L, luaL_checkinteger(L, 2), xs[0]->ndim + 1, 2);
  ad_tensor **box = l_newbox(L);
  if (ad_stack(box, xs, n, d) != AD_OK) return l_error(L);
  return 1;
}
static int l_index_select(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  int d = l_checkdim(L, 2, x->ndim);
  ad_tensor *idx = l_checktensor(L, 3);
  ad_tensor **box = l_newbox(L);
  if (ad_index_select(box, x, d, idx) != AD_OK) return l_error(L);
  return 1;
}

static const luaL_Reg fns[] = {
  {"view", l_view}, {"reshape", l_reshape}, {"permute", l_permute}, {"transpose", l_transpose},
  {"narrow", l_narrow}, {"slice", l_slice}, {"select", l_select}, {"expand", l_expand},
  {"squeeze", l_squeeze}, {"unsqueeze", l_unsqueeze}, {"flatten", l_flatten},
  {"contiguous", l_contiguous}, {"clone", l_clone}, {"chunk", l_chunk}, {"split", l_split},
  {"cat", l_cat}, {"stack", l_stack}, {"index_select", l_index_select}, {"t", l_t},
  {NULL, NULL},
};
static const luaL_Reg meths[] = {
  {"view", l_view}, {"reshape", l_reshape}, {"view_as", l_view_as}, {"reshape_as", l_reshape_as},
  {"permute", l_permute}, {"transpose", l_transpose}, {"t", l_t},
  {"narrow", l_narrow}, {"slice", l_slice}, {"select", l_select}, {"expand", l_expand},
  {"expand_as", l_expand_as}, {"squeeze", l_squeeze}, {"unsqueeze", l_unsqueeze}, {"flatten", l_flatten},
  {"contiguous", l_contiguous}, {"clone", l_clone}, {"chunk", l_chunk}, {"split", l_split},
  {"index_select", l_index_select},
  {NULL, NULL},
};

void l_register_shape(lua_State *L, int mod, int methods) { l_setfuncs2(L, mod, methods, fns, meths); }
