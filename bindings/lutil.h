/* lutil.h: helpers shared by the binding files. The only C outside bindings/
 * that knows Lua is none: this is where Lua meets the core.
 *
 * The ordering rule for every binding function (STYLE.md 6):
 *   1. check and convert all arguments (may raise; nothing owned yet);
 *   2. create every result box with l_newbox (may raise; boxes start NULL);
 *   3. call the core (never raises);
 *   4. on failure: return l_error(L) — raises ad_last_error() as a Lua error.
 * Never call a Lua function that can raise while holding a C resource that is
 * not in a box. */
#ifndef AD_LUTIL_H
#define AD_LUTIL_H

#include <lauxlib.h>
#include <lua.h>
#include "../core/ad.h"

#define L_TENSOR "advdiff.Tensor"

/* [-0, +1, m] a new empty box (NULL tensor) with the tensor metatable */
ad_tensor **l_newbox(lua_State *L);
/* [-0, +1, m] box t (takes over the caller's reference; t may not be NULL) */
void l_pushtensor(lua_State *L, ad_tensor *t);
/* [-0, +0, v] the tensor at arg; errors "bad argument #n to 'f' (advdiff.Tensor expected, got X)" */
ad_tensor *l_checktensor(lua_State *L, int arg);
ad_tensor *l_opttensor(lua_State *L, int arg);      /* nil/none -> NULL */
ad_tensor *l_testtensor(lua_State *L, int arg);     /* not a tensor -> NULL, no error */
/* [-0, +0, v] a tensor, or a Lua number turned into a 0-d tensor of dtype like
 * `like` (for `x + 1`). The 0-d tensor is boxed on the stack top (so it is
 * freed by GC): the caller must account for that extra stack slot. */
ad_tensor *l_checktensor_or_scalar(lua_State *L, int arg, const ad_tensor *like);

/* [-0, +0, v] dims: Lua 1-based or negative -> core 0-based, checked against ndim */
int l_checkdim(lua_State *L, int arg, int ndim);
int l_todim(lua_State *L, lua_Integer d, int ndim, int arg);  /* same, for a value already read */
/* an index into a dim of size n: 1..n or -n..-1 -> 0..n-1 */
int64_t l_checkindex(lua_State *L, int arg, int64_t n);
/* [-0, +0, v] shape from varargs `2, 3, 4` starting at arg, or one table {2,3,4}.
 * Returns ndim; stops at the first non-number after arg (e.g. an options table).
 * *next receives the index after the shape. */
int l_checkshape(lua_State *L, int arg, int64_t *shape, int *next);
/* list of dims from a number or a table at arg ({1,2}); none/nil -> 0 dims (all) */
int l_checkdims(lua_State *L, int arg, int ndim, int *dims);

/* options table helpers: opts is a stack index or 0 (none). Each checks the
 * type and raises "f: option 'name' must be a ..." */
int l_isopts(lua_State *L, int arg);  /* true if arg is a table that is not a tensor */
lua_Number l_optnum(lua_State *L, int opts, const char *name, lua_Number def);
lua_Integer l_optint(lua_State *L, int opts, const char *name, lua_Integer def);
int l_optbool(lua_State *L, int opts, const char *name, int def);
const char *l_optstr(lua_State *L, int opts, const char *name, const char *def);
ad_tensor *l_opttensorfield(lua_State *L, int opts, const char *name);
ad_dtype l_optdtype(lua_State *L, int opts, const char *name, ad_dtype def);
ad_device l_optdevice(lua_State *L, int opts, const char *name, ad_device def);
ad_dtype l_checkdtype(lua_State *L, int arg);
/* the generator in option `name` (an ad.Generator userdata), or the default one */
ad_generator *l_optgenerator(lua_State *L, int opts, const char *name);
#define L_GENERATOR "advdiff.Generator"
ad_device l_checkdevice(lua_State *L, int arg);
/* int pair option: a number n -> {n, n}; a table {a, b} -> {a, b} */
void l_optpair(lua_State *L, int opts, const char *name, int def, int out[2]);

/* [-0, +0, v] raise the core's last error, prefixed by nothing (core messages
 * already name the op). */
int l_error(lua_State *L);

/* Registration: each binding file adds its functions to the module table
 * (at index mod) and methods to the tensor method table (at index methods). */
typedef void (*l_register_fn)(lua_State *L, int mod, int methods);
void l_register_tensor(lua_State *L, int mod, int methods);      /* l_tensor.c */
void l_register_shape(lua_State *L, int mod, int methods);       /* l_shape.c */
void l_register_creation(lua_State *L, int mod, int methods);    /* l_creation.c */
void l_register_autograd(lua_State *L, int mod, int methods);    /* l_autograd.c */
void l_register_elementwise(lua_State *L, int mod, int methods); /* l_elementwise.c */
void l_register_reduce(lua_State *L, int mod, int methods);      /* l_reduce.c */
void l_register_linalg(lua_State *L, int mod, int methods);      /* l_linalg.c: matmul, conv, pool, resample */
void l_register_nn(lua_State *L, int mod, int methods);          /* l_nn.c: norms, softmax, attention, losses */
void l_register_io(lua_State *L, int mod, int methods);          /* l_io.c: load/save, formats, images */
void l_register_data(lua_State *L, int mod, int methods);        /* l_data.c: the threaded data loader, IDX */
void l_register_optim(lua_State *L, int mod, int methods);       /* l_optim.c: fused optimizer steps */
void l_register_metrics(lua_State *L, int mod, int methods);     /* l_metrics.c: cdist, eigh, k-NN radii, covariance */
void l_register_cuda(lua_State *L, int mod, int methods);        /* l_cuda.c: ad.cuda device functions, ad.autocast */
void l_register_proc(lua_State *L, int mod, int methods);        /* l_proc.c: child processes, SIGINT (sweeps, Jupyter) */

/* Set a table of functions as fields of the table at mod and (if methods != 0
 * and as_method) the methods table */
void l_setfuncs2(lua_State *L, int mod, int methods, const luaL_Reg *fns, const luaL_Reg *meths);

#endif
