/* l_metrics.c: Lua bindings of the evaluation-metric family (core/metrics.h).
 * Public: ad.cdist(x1, x2), ad.eigh(a) -> eigenvalues, eigenvectors
 * (torch.linalg.eigh: ascending values, vectors in the columns),
 * ad.eigvalsh(a). The rest are the engine room of advdiff.metrics (Lua):
 *   _knn_radii(x, k, ids|nil, block_rows) -> radii (N) f64
 *   _manifold_counts(real, fake, real_radii, fake_radii|nil, block_rows)
 *       -> fake_in_real, real_in_real[, real_in_fake] (i64 counts)
 *   _mean_cov(x, ddof) -> mu (D) f64, sigma (D, D) f64
 * None of these is differentiable. */
#include "lutil.h"
#include "../core/metrics.h"

static int l_cdist(lua_State *L) {
  ad_tensor *a = l_checktensor(L, 1), *b = l_checktensor(L, 2);
  ad_tensor **box = l_newbox(L);
  if (ad_cdist(box, a, b) != AD_OK) return l_error(L);
  return 1;
}

static int l_eigh(lua_State *L) {
  ad_tensor *a = l_checktensor(L, 1);
  ad_tensor **w = l_newbox(L), **v = l_newbox(L);
  if (ad_eigh(w, v, a) != AD_OK) return l_error(L);
  return 2;
}

static int l_eigvalsh(lua_State *L) {
  ad_tensor *a = l_checktensor(L, 1);
  ad_tensor **w = l_newbox(L);
  if (ad_eigh(w, NULL, a) != AD_OK) return l_error(L);
  return 1;
}

static int l_knn_radii(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  lua_Integer k = luaL_checkinteger(L, 2);
  ad_tensor *ids = l_opttensor(L, 3);
  lua_Integer block = luaL_optinteger(L, 4, 0);
  ad_tensor **box = l_newbox(L);
  if (ad_knn_radii(box, x, (int64_t)k, ids, (int64_t)block) != AD_OK) return l_error(L);
  return 1;
}

static int l_manifold_counts(lua_State *L) {
  ad_tensor *real = l_checktensor(L, 1), *fake = l_checktensor(L, 2), *rr = l_checktensor(L, 3);
  ad_tensor *rf = l_opttensor(L, 4);
  lua_Integer block = luaL_optinteger(L, 5, 0);
  ad_tensor **fir = l_newbox(L), **rir = l_newbox(L), **rif = l_newbox(L);
  if (ad_manifold_counts(fir, rir, rf ? rif : NULL, real, fake, rr, rf, (int64_t)block) != AD_OK) return l_error(L);
  if (!rf) {
    lua_pop(L, 1);
    return 2;
  }
  return 3;
}

static int l_mean_cov(lua_State *L) {
  ad_tensor *x = l_checktensor(L, 1);
  lua_Integer ddof = luaL_optinteger(L, 2, 1);
  if (ddof < 0 || ddof > 1 << 30) return luaL_argerror(L, 2, "ddof must be a small non-negative integer");
  ad_tensor **mu = l_newbox(L), **sigma = l_newbox(L);
  if (ad_mean_cov(mu, sigma, x, (int)ddof) != AD_OK) return l_error(L);
  return 2;
}

static const luaL_Reg metrics_fns[] = {
  {"cdist", l_cdist},
  {"eigh", l_eigh},
  {"eigvalsh", l_eigvalsh},
  {"_knn_radii", l_knn_radii},
  {"_manifold_counts", l_manifold_counts},
  {"_mean_cov", l_mean_cov},
  {NULL, NULL},
};

void l_register_metrics(lua_State *L, int mod, int methods) {
  l_setfuncs2(L, mod, methods, metrics_fns, NULL);
}
