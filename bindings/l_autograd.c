/* l_autograd.c: backward, grad mode, detach, and autograd functions written in
 * Lua (forward and backward as Lua functions, recorded as one node).
 *
 * A Lua-defined node's backward runs Lua code from inside the C engine. It
 * runs under lua_pcall, so a Lua error becomes an AD_ECALLBACK status and no
 * longjmp crosses core frames. Its registry references are released lazily:
 * a node may be freed from a __gc, where touching the registry through an
 * arbitrary lua_State is unsafe, so the refs are queued and dropped at the
 * next autograd call. */
#include <stdlib.h>
#include <string.h>
#include "lutil.h"

static _Thread_local lua_State *current_L;

/* ---- deferred registry unrefs ---- */
static int *pending_refs;
static int n_pending, cap_pending;

static void queue_unref(int ref) {
  if (n_pending == cap_pending) {
    int cap = cap_pending ? cap_pending * 2 : 64;
    int *p = realloc(pending_refs, (size_t)cap * sizeof *p);
    if (!p) return;                 /* leaks one registry slot rather than crash */
    pending_refs = p;
    cap_pending = cap;
  }
  pending_refs[n_pending++] = ref;
}

static void drain_unrefs(lua_State *L) {
  while (n_pending > 0) luaL_unref(L, LUA_REGISTRYINDEX, pending_refs[--n_pending]);
}

typedef struct {
  int ref_bwd, ref_ctx;
  int n_args;          /* forward's argument count (backward returns one grad per argument) */
  int n_tensor_in;
  int arg_pos[];       /* argument position (1-based) of each tensor input */
} lfn_attrs;

static void lfn_attrs_free(void *p) {
  lfn_attrs *a = p;
  queue_unref(a->ref_bwd);
  queue_unref(a->ref_ctx);
  free(a);
}

typedef struct { ad_node *node; ad_tensor *const *gout; ad_tensor **gin; } lfn_call;

/* protected part of a Lua node's backward */
static int lfn_backward_protected(lua_State *L) {
  lfn_call *c = lua_touserdata(L, 1);
  lfn_attrs *a = c->node->attrs;
  int nout = c->node->n_outputs;
  luaL_checkstack(L, nout + a->n_args + 8, "backward");
  int base = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, a->ref_bwd);
  lua_rawgeti(L, LUA_REGISTRYINDEX, a->ref_ctx);
  for (int k = 0; k < nout; k++) {
    ad_tensor **box = l_newbox(L);
    if (c->gout[k]) { ad_tensor_retain(c->gout[k]); *box = c->gout[k]; }
  }
  lua_call(L, nout + 1, LUA_MULTRET);
  int nres = lua_gettop(L) - base;
  for (int i = 0; i < a->n_tensor_in; i++) {
    int p = a->arg_pos[i];
    if (p > nres || lua_isnil(L, base + p) || !c->node->needs_grad[i]) continue;
    ad_tensor *g = l_testtensor(L, base + p);
    if (!g) return luaL_error(L, "backward returned a %s for argument %d (expected a tensor or nil)",
                              luaL_typename(L, base + p), p);
    ad_tensor_retain(g);
    c->gin[i] = g;
  }
  return 0;
}

static ad_status lfn_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  lua_State *L = current_L;
  if (!L) return AD_FAIL(AD_ECALLBACK, "%s: a Lua autograd function can only run backward from Lua", node->op->name);
  lfn_call c = {node, gout, gin};
  lua_pushcfunction(L, lfn_backward_protected);
  lua_pushlightuserdata(L, &c);
  bool prev = ad_set_grad_enabled(false);
  int rc = lua_pcall(L, 1, 0, 0);
  ad_set_grad_enabled(prev);
  if (rc != LUA_OK) {
    ad_status st = AD_FAIL(AD_ECALLBACK, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error in Lua backward");
    lua_pop(L, 1);
    return st;
  }
  return AD_OK;
}

/* ad._function_apply(name, forward, backward, ...) -> forward's results */
static int l_function_apply(lua_State *L) {
  drain_unrefs(L);
  const char *name = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  int nargs = lua_gettop(L) - 3;
  int ntensor = 0;
  for (int i = 1; i <= nargs; i++) if (l_testtensor(L, 3 + i)) ntensor++;
  /* ctx = {needs_input_grad = {...}} */
  lua_createtable(L, 0, 4);
  int ctx = lua_gettop(L);
  lua_createtable(L, nargs, 0);
  for (int i = 1; i <= nargs; i++) {
    ad_tensor *t = l_testtensor(L, 3 + i);
    lua_pushboolean(L, t && t->requires_grad && ad_grad_enabled());
    lua_rawseti(L, -2, i);
  }
  lua_setfield(L, ctx, "needs_input_grad");
  /* forward(ctx, ...) under no_grad; restore the mode on error */
  int top = lua_gettop(L);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, ctx);
  for (int i = 1; i <= nargs; i++) lua_pushvalue(L, 3 + i);
  bool prev = ad_set_grad_enabled(false);
  int rc = lua_pcall(L, nargs + 1, LUA_MULTRET, 0);
  ad_set_grad_enabled(prev);
  if (rc != LUA_OK) return lua_error(L);
  int nres = lua_gettop(L) - top;
  if (nres > AD_MAX_NODE_OUTPUTS) return luaL_error(L, "%s: forward returned %d values (at most %d)", name, nres, AD_MAX_NODE_OUTPUTS);
  /* outputs become fresh aliases, so a forward that returns an input does not rewire it */
  ad_tensor *outs[AD_MAX_NODE_OUTPUTS];
  int nout = 0;
  for (int i = 1; i <= nres; i++) {
    ad_tensor *t = l_testtensor(L, top + i);
    if (!t) continue;
    ad_tensor **box = l_newbox(L);
    if (ad_detach(box, t) != AD_OK) return l_error(L);
    lua_replace(L, top + i);
    outs[nout++] = *(ad_tensor **)lua_touserdata(L, top + i);
  }
  ad_tensor **ins = lua_newuserdatauv(L, sizeof(ad_tensor *) * (size_t)(ntensor ? ntensor : 1), 0);
  lfn_attrs *a = malloc(sizeof *a + sizeof(int) * (size_t)(ntensor ? ntensor : 1));
  if (!a) return luaL_error(L, "%s: out of memory", name);
  a->n_args = nargs;
  a->n_tensor_in = 0;
  for (int i = 1; i <= nargs; i++) {
    ad_tensor *t = l_testtensor(L, 3 + i);
    if (t) { ins[a->n_tensor_in] = t; a->arg_pos[a->n_tensor_in++] = i; }
  }
  lua_pop(L, 1);  /* ins: the argument slots keep the tensors alive */
  if (!ad_needs_record(ins, a->n_tensor_in) || nout == 0) { free(a); return nres; }
  /* registry refs cannot raise except on memory errors; take them before the opdef is built */
  lua_pushvalue(L, 3);
  a->ref_bwd = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, ctx);
  a->ref_ctx = luaL_ref(L, LUA_REGISTRYINDEX);
  /* one opdef per name, interned for the process lifetime (names are few) */
  static struct { char *name; ad_opdef def; } defs[256];
  static int ndefs;
  const ad_opdef *def = NULL;
  for (int i = 0; i < ndefs; i++) if (strcmp(defs[i].name, name) == 0) { def = &defs[i].def; break; }
  if (!def) {
    if (ndefs == 256) def = &defs[255].def;      /* beyond 256 distinct names, share the last slot's label */
    else {
      size_t len = strlen(name) + 1;
      defs[ndefs].name = malloc(len);
      if (defs[ndefs].name) memcpy(defs[ndefs].name, name, len);
      defs[ndefs].def.name = defs[ndefs].name ? defs[ndefs].name : "lua_function";
      defs[ndefs].def.backward = lfn_backward;
      def = &defs[ndefs++].def;
    }
  }
  if (ad_record_owned(def, outs, nout, ins, a->n_tensor_in, NULL, 0, a, lfn_attrs_free) != AD_OK) return l_error(L);
  return nres;
}

/* x:backward([grad], [{retain_graph=false}]) */
static int l_backward(lua_State *L) {
  drain_unrefs(L);
  ad_tensor *x = l_checktensor(L, 1);
  ad_tensor *g = NULL;
  int opts = 0;
  if (l_testtensor(L, 2)) { g = l_checktensor(L, 2); if (lua_type(L, 3) == LUA_TTABLE) opts = 3; }
  else if (lua_type(L, 2) == LUA_TTABLE) opts = 2;
  else if (!lua_isnoneornil(L, 2)) return luaL_argerror(L, 2, "expected a gradient tensor or an options table");
  int retain = l_optbool(L, opts, "retain_graph", 0);
  lua_State *prevL = current_L;
  current_L = L;
  ad_status st = ad_backward(&x, &g, 1, retain);
  current_L = prevL;
  if (st != AD_OK) return l_error(L);
  return 0;
}

/* ad.backward({tensors}, {grads} or nil, {retain_graph=}) */
static int l_backward_many(lua_State *L) {
  drain_unrefs(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  int n = (int)luaL_len(L, 1);
  if (n < 1 || n > 4096) return luaL_argerror(L, 1, "expected a list of 1..4096 tensors");
  ad_tensor **xs = lua_newuserdatauv(L, sizeof(ad_tensor *) * (size_t)n, 0);
  ad_tensor **gs = lua_newuserdatauv(L, sizeof(ad_tensor *) * (size_t)n, 0);
  for (int i = 0; i < n; i++) {
    lua_geti(L, 1, i + 1);
    xs[i] = l_testtensor(L, -1);
    if (!xs[i]) return luaL_argerror(L, 1, lua_pushfstring(L, "element %d is not a tensor", i + 1));
    lua_pop(L, 1);
    gs[i] = NULL;
    if (lua_type(L, 2) == LUA_TTABLE) {
      lua_geti(L, 2, i + 1);
      if (!lua_isnil(L, -1)) {
        gs[i] = l_testtensor(L, -1);
        if (!gs[i]) return luaL_argerror(L, 2, lua_pushfstring(L, "gradient %d is not a tensor", i + 1));
      }
      lua_pop(L, 1);
    }
  }
  int retain = l_optbool(L, lua_type(L, 3) == LUA_TTABLE ? 3 : 0, "retain_graph", 0);
  lua_State *prevL = current_L;
  current_L = L;
  ad_status st = ad_backward(xs, gs, n, retain);
  current_L = prevL;
  if (st != AD_OK) return l_error(L);
  return 0;
}

/* run fn with grad mode set, restoring it even if fn raises */
static int with_grad_mode(lua_State *L, bool on) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  int nargs = lua_gettop(L) - 1;
  bool prev = ad_set_grad_enabled(on);
  int rc = lua_pcall(L, nargs, LUA_MULTRET, 0);
  ad_set_grad_enabled(prev);
  if (rc != LUA_OK) return lua_error(L);
  return lua_gettop(L);
}
static int l_no_grad(lua_State *L) { return with_grad_mode(L, false); }
static int l_enable_grad(lua_State *L) { return with_grad_mode(L, true); }
static int l_is_grad_enabled(lua_State *L) { lua_pushboolean(L, ad_grad_enabled()); return 1; }
static int l_set_grad_enabled(lua_State *L) {
  luaL_checktype(L, 1, LUA_TBOOLEAN);
  lua_pushboolean(L, ad_set_grad_enabled(lua_toboolean(L, 1)));
  return 1;
}

static int l_detach(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  ad_tensor **box = l_newbox(L);
  if (ad_detach(box, x) != AD_OK) return l_error(L);
  return 1;
}
static int l_requires_grad_(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  int on = lua_isnoneornil(L, 2) ? 1 : lua_toboolean(L, 2);
  if (ad_set_requires_grad(x, on) != AD_OK) return l_error(L);
  lua_settop(L, 1);
  return 1;
}
static int l_zero_grad(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  int to_none = lua_isnoneornil(L, 2) ? 1 : lua_toboolean(L, 2);
  if (ad_zero_grad(x, to_none) != AD_OK) return l_error(L);
  return 0;
}

static const luaL_Reg fns[] = {
  {"_function_apply", l_function_apply}, {"backward", l_backward_many},
  {"no_grad", l_no_grad}, {"enable_grad", l_enable_grad}, {"is_grad_enabled", l_is_grad_enabled},
  {"set_grad_enabled", l_set_grad_enabled}, {"detach", l_detach},
  {NULL, NULL},
};
static const luaL_Reg meths[] = {
  {"backward", l_backward}, {"detach", l_detach}, {"requires_grad_", l_requires_grad_},
  {"zero_grad", l_zero_grad},
  {NULL, NULL},
};

void l_register_autograd(lua_State *L, int mod, int methods) { l_setfuncs2(L, mod, methods, fns, meths); }
