/* l_module.c: luaopen_advdiff_core, the module table, the tensor metatable and
 * the generator userdata. Each op family registers its own functions from its
 * own binding file. */
#include <string.h>
#include "lutil.h"

#define ADVDIFF_VERSION "0.1.0"

/* ---- generator ---- */
static int l_generator_new(lua_State *L) {
  lua_Integer seed = luaL_optinteger(L, 1, 0);
  ad_generator *g = lua_newuserdatauv(L, sizeof *g, 0);
  g->seed = (uint64_t)seed;
  g->offset = 0;
  luaL_setmetatable(L, L_GENERATOR);
  return 1;
}
static int l_generator_manual_seed(lua_State *L) {
  ad_generator *g = luaL_checkudata(L, 1, L_GENERATOR);
  g->seed = (uint64_t)luaL_checkinteger(L, 2);
  g->offset = 0;
  lua_settop(L, 1);
  return 1;
}
/* state is {seed=, offset=}: plain numbers, so it can go in a JSON checkpoint */
static int l_generator_get_state(lua_State *L) {
  ad_generator *g = lua_isnoneornil(L, 1) ? ad_default_generator() : luaL_checkudata(L, 1, L_GENERATOR);
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, (lua_Integer)g->seed); lua_setfield(L, -2, "seed");
  lua_pushinteger(L, (lua_Integer)g->offset); lua_setfield(L, -2, "offset");
  return 1;
}
static int l_generator_set_state(lua_State *L) {
  ad_generator *g = luaL_checkudata(L, 1, L_GENERATOR);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_getfield(L, 2, "seed"); lua_getfield(L, 2, "offset");
  if (!lua_isinteger(L, -2) || !lua_isinteger(L, -1)) return luaL_argerror(L, 2, "state must be {seed=integer, offset=integer}");
  g->seed = (uint64_t)lua_tointeger(L, -2);
  g->offset = (uint64_t)lua_tointeger(L, -1);
  return 0;
}
static int l_generator_tostring(lua_State *L) {
  ad_generator *g = luaL_checkudata(L, 1, L_GENERATOR);
  lua_pushfstring(L, "Generator(seed=%I, offset=%I)", (lua_Integer)g->seed, (lua_Integer)g->offset);
  return 1;
}
static int l_default_generator(lua_State *L) {
  /* a light userdata would not have methods: expose state functions instead */
  lua_pushlightuserdata(L, ad_default_generator());
  return 1;
}
static int l_manual_seed(lua_State *L) {
  ad_manual_seed((uint64_t)luaL_checkinteger(L, 1));
  return 0;
}
static int l_get_rng_state(lua_State *L) {
  ad_generator *g = ad_default_generator();
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, (lua_Integer)g->seed); lua_setfield(L, -2, "seed");
  lua_pushinteger(L, (lua_Integer)g->offset); lua_setfield(L, -2, "offset");
  return 1;
}
static int l_set_rng_state(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "seed"); lua_getfield(L, 1, "offset");
  if (!lua_isinteger(L, -2) || !lua_isinteger(L, -1)) return luaL_argerror(L, 1, "state must be {seed=integer, offset=integer}");
  ad_generator *g = ad_default_generator();
  g->seed = (uint64_t)lua_tointeger(L, -2);
  g->offset = (uint64_t)lua_tointeger(L, -1);
  return 0;
}

static int l_memory(lua_State *L) {
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, ad_memory_allocated(AD_DEV_CPU)); lua_setfield(L, -2, "cpu");
  lua_pushinteger(L, ad_memory_peak(AD_DEV_CPU)); lua_setfield(L, -2, "cpu_peak");
  lua_pushinteger(L, ad_memory_allocated(AD_DEV_CUDA)); lua_setfield(L, -2, "cuda");
  lua_pushinteger(L, ad_memory_peak(AD_DEV_CUDA)); lua_setfield(L, -2, "cuda_peak");
  return 1;
}
static int l_reset_peak_memory(lua_State *L) {
  ad_memory_reset_peak(AD_DEV_CPU);
  ad_memory_reset_peak(AD_DEV_CUDA);
  return 0;
}

static const luaL_Reg module_fns[] = {
  {"Generator", l_generator_new},
  {"manual_seed", l_manual_seed},
  {"get_rng_state", l_get_rng_state},
  {"set_rng_state", l_set_rng_state},
  {"memory", l_memory},
  {"reset_peak_memory", l_reset_peak_memory},
  {NULL, NULL},
};
static const luaL_Reg generator_methods[] = {
  {"manual_seed", l_generator_manual_seed},
  {"get_state", l_generator_get_state},
  {"set_state", l_generator_set_state},
  {NULL, NULL},
};

int luaopen_advdiff_core(lua_State *L) {
  (void)l_default_generator;
  lua_newtable(L);                                  /* module */
  int mod = lua_gettop(L);
  lua_newtable(L);                                  /* tensor methods */
  int methods = lua_gettop(L);

  luaL_newmetatable(L, L_TENSOR);                   /* l_register_tensor fills the metamethods */
  lua_pushvalue(L, methods);
  lua_setfield(L, -2, "__methods");
  lua_pushliteral(L, "advdiff.Tensor");
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);

  luaL_newmetatable(L, L_GENERATOR);
  lua_newtable(L);
  luaL_setfuncs(L, generator_methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_generator_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);

  l_setfuncs2(L, mod, methods, module_fns, NULL);
  l_register_tensor(L, mod, methods);
  l_register_shape(L, mod, methods);
  l_register_creation(L, mod, methods);
  l_register_autograd(L, mod, methods);
  l_register_elementwise(L, mod, methods);
  l_register_reduce(L, mod, methods);
  l_register_linalg(L, mod, methods);
  l_register_nn(L, mod, methods);
  l_register_io(L, mod, methods);
  l_register_data(L, mod, methods);
  l_register_optim(L, mod, methods);
  l_register_metrics(L, mod, methods);
  l_register_cuda(L, mod, methods);
  l_register_proc(L, mod, methods);  /* [sweep/jupyter, issue 9] */

  lua_pushvalue(L, methods);
  lua_setfield(L, mod, "Tensor");                   /* ad.Tensor: the method table, for extension */
  lua_pushliteral(L, ADVDIFF_VERSION);
  lua_setfield(L, mod, "__version");
  lua_pushboolean(L,
#ifdef AD_HAVE_CUDA
                  1
#else
                  0
#endif
  );
  lua_setfield(L, mod, "built_with_cuda");
  lua_settop(L, mod);
  return 1;
}
