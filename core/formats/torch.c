/* torch.c: PyTorch checkpoints.
 *
 * Zip format (torch >= 1.6): "<prefix>/data.pkl" is a pickle whose persistent
 * ids ('storage', StorageClass, key, location, numel) name the records
 * "<prefix>/data/<key>". Records are stored uncompressed and 64-byte aligned,
 * so storages are mapped from the file, not copied; several tensors naming
 * one key share one storage (views keep their offsets and strides).
 *
 * Legacy format (torch < 1.6, or _use_new_zipfile_serialization=False): a
 * sequence of pickles (magic number, protocol version, sys info, the object
 * with persistent ids ('storage', StorageClass, root_key, location, numel,
 * view_metadata), the list of storage keys), then for each key an int64
 * element count and the raw bytes.
 *
 * Writing produces the zip format that torch.load reads. */
#define _POSIX_C_SOURCE 200809L
#define AD_FORMATS_INTERNAL
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "formats.h"

/* ---- a string -> index hash map (keys are file-controlled: open addressing,
 * grown at half load, so inserts and lookups stay O(1) on hostile input) ---- */
typedef struct { char **keys; size_t *vals; size_t cap, n; } strmap;

static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}
static void strmap_free(strmap *m) { free(m->keys); free(m->vals); memset(m, 0, sizeof *m); }
static size_t *strmap_get(const strmap *m, const char *k) {
  if (!m->cap) return NULL;
  for (size_t i = hash_str(k) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    if (!m->keys[i]) return NULL;
    if (strcmp(m->keys[i], k) == 0) return &m->vals[i];
  }
}
/* k must outlive the map */
static bool strmap_put(strmap *m, char *k, size_t v) {
  if ((m->n + 1) * 2 > m->cap) {
    size_t nc = m->cap ? m->cap * 2 : 64;
    char **nk = calloc(nc, sizeof *nk);
    size_t *nv = calloc(nc, sizeof *nv);
    if (!nk || !nv) { free(nk); free(nv); return false; }
    for (size_t i = 0; i < m->cap; i++) {
      if (!m->keys[i]) continue;
      size_t j = hash_str(m->keys[i]) & (nc - 1);
      while (nk[j]) j = (j + 1) & (nc - 1);
      nk[j] = m->keys[i];
      nv[j] = m->vals[i];
    }
    free(m->keys);
    free(m->vals);
    m->keys = nk;
    m->vals = nv;
    m->cap = nc;
  }
  size_t i = hash_str(k) & (m->cap - 1);
  while (m->keys[i]) i = (i + 1) & (m->cap - 1);
  m->keys[i] = k;
  m->vals[i] = v;
  m->n++;
  return true;
}

static void storage_info_free(void *p) {
  fmt_storage_info *si = p;
  ad_storage_release(si->storage);
  free(si->key);
  free(si);
}

static ad_value *new_storage_value(ad_doc *doc, fmt_storage_info **out) {
  ad_value *v = fmt_value_new(doc, AD_V_STORAGE);
  if (!v) return NULL;
  fmt_storage_info *si = fmt_doc_alloc_priv(doc, v, sizeof *si);
  if (!si) return NULL;
  v->priv_free = storage_info_free;
  *out = si;
  return v;
}

/* the common head of both persistent-id forms */
static ad_status parse_pid_head(fmt_unpickler *u, ad_value *pid, size_t want_n, fmt_storage_info *si, const char **key) {
  if (pid->kind != AD_V_TUPLE || pid->u.seq.n < 1)
    return fmt_unpickle_fail(u, AD_EFORMAT, "persistent id must be a tuple, got %s", ad_value_kind_name(pid->kind));
  ad_value **a = pid->u.seq.items;
  if (a[0]->kind != AD_V_STR || strcmp(a[0]->u.str.ptr, "storage") != 0) {
    if (a[0]->kind == AD_V_STR && strcmp(a[0]->u.str.ptr, "module") == 0)
      return fmt_unpickle_fail(u, AD_EFORMAT, "persistent id of a module (pickled source code) refused: only state dicts can be loaded");
    return fmt_unpickle_fail(u, AD_EFORMAT, "persistent id is not a storage reference");
  }
  if (pid->u.seq.n != want_n)
    return fmt_unpickle_fail(u, AD_EFORMAT, "storage reference has %zu fields, expected %zu", pid->u.seq.n, want_n);
  size_t esize;
  if (!fmt_pickle_storage_class(a[1], &si->dtype, &si->dtype_ok, &esize, &si->type_name))
    return fmt_unpickle_fail(u, AD_EFORMAT, "storage reference names no storage class");
  if (a[2]->kind != AD_V_STR) return fmt_unpickle_fail(u, AD_EFORMAT, "storage key must be a string");
  if (a[3]->kind != AD_V_STR) return fmt_unpickle_fail(u, AD_EFORMAT, "storage location must be a string");
  if (a[4]->kind != AD_V_INT || a[4]->u.i < 0)
    return fmt_unpickle_fail(u, AD_EFORMAT, "storage '%s': size must be a non-negative int", a[2]->u.str.ptr);
  si->numel = (uint64_t)a[4]->u.i;
  *key = a[2]->u.str.ptr;
  uint64_t nb;
  if (!fmt_mul_ok(si->numel, esize, &nb) || nb > ((uint64_t)1 << 62))
    return fmt_unpickle_fail(u, AD_EFORMAT, "storage '%s': %llu elements is too large", *key, (unsigned long long)si->numel);
  return AD_OK;
}

static size_t storage_esize(const fmt_storage_info *si, const ad_value *cls) {
  ad_dtype dt;
  bool ok;
  size_t es;
  const char *nm;
  fmt_pickle_storage_class(cls, &dt, &ok, &es, &nm);
  return es;
}

/* ---- zip format ---- */
typedef struct {
  const fmt_src *src;
  fmt_zip *z;
  char *prefix;
  strmap cache;              /* key -> index into storages */
  ad_storage **storages;
  uint64_t *nbytes;
  char **keys;
  size_t n, cap;
} zip_ctx;

static ad_status zip_persistent_load(void *ctx, fmt_unpickler *u, ad_value *pid, ad_value **out) {
  zip_ctx *c = ctx;
  fmt_storage_info *si;
  ad_value *v = new_storage_value(fmt_unpickler_doc(u), &si);
  if (!v) return AD_ENOMEM;
  const char *key;
  AD_TRY(parse_pid_head(u, pid, 5, si, &key));
  size_t es = storage_esize(si, pid->u.seq.items[1]);
  uint64_t need = si->numel * es;
  si->key = strdup(key);
  if (!si->key) return AD_ENOMEM;
  size_t *idx = strmap_get(&c->cache, key);
  if (!idx) {
    size_t plen = strlen(c->prefix), klen = strlen(key);
    char *rec = malloc(plen + klen + 8);
    if (!rec) return AD_ENOMEM;
    sprintf(rec, "%s/data/%s", c->prefix, key);
    const fmt_zip_entry *e = fmt_zip_find(c->z, rec);
    if (!e) {
      ad_status st = fmt_unpickle_fail(u, AD_EFORMAT, "storage '%s' has no record '%s' in the archive", key, rec);
      free(rec);
      return st;
    }
    free(rec);
    if (e->usize < need)
      return fmt_unpickle_fail(u, AD_EFORMAT, "storage '%s' declares %llu elements (%llu bytes) but its record holds %llu bytes",
                               key, (unsigned long long)si->numel, (unsigned long long)need, (unsigned long long)e->usize);
    if (c->n == c->cap) {
      size_t nc = c->cap ? c->cap * 2 : 64;
      ad_storage **s = realloc(c->storages, nc * sizeof *s);
      if (s) c->storages = s;
      uint64_t *nb = realloc(c->nbytes, nc * sizeof *nb);
      if (nb) c->nbytes = nb;
      char **k = realloc(c->keys, nc * sizeof *k);
      if (k) c->keys = k;
      if (!s || !nb || !k) return AD_ENOMEM;
      c->cap = nc;
    }
    ad_storage *s;
    /* the whole record: other tensors may view more of it under another dtype */
    AD_TRY(fmt_zip_storage(&s, c->src, e, e->usize, es ? es : 1));
    c->keys[c->n] = si->key;   /* the first info of a key owns the string the map points at */
    c->storages[c->n] = s;
    c->nbytes[c->n] = e->usize;
    if (!strmap_put(&c->cache, si->key, c->n)) { ad_storage_release(s); return AD_ENOMEM; }
    c->n++;
    idx = strmap_get(&c->cache, key);
  } else if (c->nbytes[*idx] < need) {
    return fmt_unpickle_fail(u, AD_EFORMAT, "storage '%s' is referenced with %llu bytes but holds %llu", key,
                             (unsigned long long)need, (unsigned long long)c->nbytes[*idx]);
  }
  si->storage = c->storages[*idx];
  ad_storage_retain(si->storage);
  *out = v;
  return AD_OK;
}

ad_status fmt_torch_load(ad_doc *doc, const fmt_src *src) {
  fmt_zip z;
  AD_TRY(fmt_zip_open(&z, src));
  zip_ctx c;
  memset(&c, 0, sizeof c);
  c.src = src;
  c.z = &z;
  ad_status st = AD_OK;
  uint8_t *pkl = NULL;
  /* the archive prefix: the directory holding data.pkl (torch uses the
   * file's base name at save time, or "archive") */
  const fmt_zip_entry *pe = NULL;
  for (size_t i = 0; i < z.n && !pe; i++) {
    const char *nm = z.e[i].name, *sl = strchr(nm, '/');
    if (sl && strcmp(sl, "/data.pkl") == 0) pe = &z.e[i];
  }
  if (!pe) {
    bool npy = z.n > 0;
    for (size_t i = 0; i < z.n; i++) {
      size_t l = strlen(z.e[i].name);
      if (l < 4 || strcmp(z.e[i].name + l - 4, ".npy") != 0) npy = false;
    }
    st = fmt_fail(src->name, AD_EFORMAT, npy ? "this zip holds .npy arrays, not a torch checkpoint (load it as .npz)"
                                             : "zip has no '<name>/data.pkl' record: not a torch checkpoint");
    goto done;
  }
  size_t plen = (size_t)(strchr(pe->name, '/') - pe->name);
  c.prefix = malloc(plen + 1);
  if (!c.prefix) { st = fmt_fail(src->name, AD_ENOMEM, "out of memory"); goto done; }
  memcpy(c.prefix, pe->name, plen);
  c.prefix[plen] = 0;
  AD_TRY_GOTO(st, fmt_zip_read(&pkl, src, pe), done);
  fmt_unpickle_opts o = {src->name, pe->name, 0, zip_persistent_load, &c};
  ad_value *root;
  AD_TRY_GOTO(st, fmt_unpickle(&root, doc, pkl, (size_t)pe->usize, NULL, &o), done);
  AD_TRY_GOTO(st, fmt_pickle_finalize(doc, src->name), done);
  ad_doc_set_root(doc, root);
  fmt_doc_set_format(doc, AD_FMT_TORCH);
done:
  for (size_t i = 0; i < c.n; i++) ad_storage_release(c.storages[i]);
  free(c.storages);
  free(c.nbytes);
  free(c.keys);
  strmap_free(&c.cache);
  free(c.prefix);
  free(pkl);
  fmt_zip_close(&z);
  return st;
}

/* ---- legacy format ---- */
typedef struct {
  char *key;            /* owned by the first info naming it */
  ad_dtype dtype;
  bool dtype_ok;
  size_t esize;
  uint64_t numel;
  ad_storage *storage;
  bool seen;
} legacy_root;

typedef struct {
  strmap map;
  legacy_root *roots;
  size_t n, cap;
} legacy_ctx;

static ad_status legacy_persistent_load(void *ctx, fmt_unpickler *u, ad_value *pid, ad_value **out) {
  legacy_ctx *c = ctx;
  fmt_storage_info *si;
  ad_value *v = new_storage_value(fmt_unpickler_doc(u), &si);
  if (!v) return AD_ENOMEM;
  const char *key;
  AD_TRY(parse_pid_head(u, pid, 6, si, &key));
  size_t es = storage_esize(si, pid->u.seq.items[1]);
  uint64_t root_numel = si->numel;
  si->key = strdup(key);
  if (!si->key) return AD_ENOMEM;
  ad_value *view = pid->u.seq.items[5];
  if (view->kind == AD_V_TUPLE) {
    /* (view_key, offset, view_size): a view into the root storage */
    if (view->u.seq.n != 3 || view->u.seq.items[1]->kind != AD_V_INT || view->u.seq.items[2]->kind != AD_V_INT ||
        view->u.seq.items[1]->u.i < 0 || view->u.seq.items[2]->u.i < 0)
      return fmt_unpickle_fail(u, AD_EFORMAT, "storage '%s': bad view metadata", key);
    uint64_t off = (uint64_t)view->u.seq.items[1]->u.i, vn = (uint64_t)view->u.seq.items[2]->u.i, e;
    if (!fmt_add_ok(off, vn, &e) || e > root_numel)
      return fmt_unpickle_fail(u, AD_EFORMAT, "storage view [%llu, +%llu) lies outside storage '%s' of %llu elements",
                               (unsigned long long)off, (unsigned long long)vn, key, (unsigned long long)root_numel);
    si->elem_offset = (int64_t)off;
    si->numel = vn;
  } else if (view->kind != AD_V_NONE) {
    return fmt_unpickle_fail(u, AD_EFORMAT, "storage '%s': bad view metadata", key);
  }
  size_t *idx = strmap_get(&c->map, key);
  if (idx) {
    legacy_root *r = &c->roots[*idx];
    if (r->dtype != si->dtype || r->numel != root_numel || r->esize != es)
      return fmt_unpickle_fail(u, AD_EFORMAT, "storage '%s' is referenced with two different types or sizes", key);
  } else {
    if (c->n == c->cap) {
      size_t nc = c->cap ? c->cap * 2 : 64;
      legacy_root *r = realloc(c->roots, nc * sizeof *r);
      if (!r) return AD_ENOMEM;
      c->roots = r;
      c->cap = nc;
    }
    c->roots[c->n] = (legacy_root){si->key, si->dtype, si->dtype_ok, es, root_numel, NULL, false};
    if (!strmap_put(&c->map, si->key, c->n)) return AD_ENOMEM;
    c->n++;
  }
  *out = v;
  return AD_OK;
}

/* PROTO 2, LONG1 of 10 bytes (0x1950a86a20f9469cfc6c), STOP */
static const uint8_t LEGACY_MAGIC[] = {0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e};

bool fmt_is_torch_legacy(const uint8_t *d, size_t n) {
  size_t off = (n >= 2 && d[0] == 0x80) ? 2 : 0;
  return n >= off + sizeof LEGACY_MAGIC && memcmp(d + off, LEGACY_MAGIC, sizeof LEGACY_MAGIC) == 0;
}

ad_status fmt_torch_legacy_load(ad_doc *doc, const fmt_src *src) {
  const uint8_t *d = src->data;
  size_t len = src->len, pos;
  if (!fmt_is_torch_legacy(d, len)) {
    if (len >= 262 && memcmp(d + 257, "ustar", 5) == 0)
      return fmt_fail(src->name, AD_EFORMAT, "tar-based torch checkpoints (torch < 0.4) are not supported");
    return fmt_fail(src->name, AD_EFORMAT, "not a legacy torch checkpoint (bad magic number)");
  }
  pos = (d[0] == 0x80 ? 2 : 0) + sizeof LEGACY_MAGIC;
  legacy_ctx c;
  memset(&c, 0, sizeof c);
  ad_status st;
  ad_value *v, *root, *keys;
  size_t used;
  fmt_unpickle_opts o = {src->name, "protocol version pickle", pos, NULL, NULL};
  AD_TRY_GOTO(st, fmt_unpickle(&v, doc, d + pos, len - pos, &used, &o), done);
  if (v->kind != AD_V_INT || v->u.i != 1001) {
    st = fmt_fail(src->name, AD_EFORMAT, "offset %zu: legacy protocol version %lld is not supported (expected 1001)", pos,
                  v->kind == AD_V_INT ? (long long)v->u.i : -1LL);
    goto done;
  }
  pos += used;
  o.what = "sys info pickle";
  o.base_offset = pos;
  AD_TRY_GOTO(st, fmt_unpickle(&v, doc, d + pos, len - pos, &used, &o), done);
  ad_value *le = ad_value_dict_get(v, "little_endian");
  if (v->kind != AD_V_DICT || (le && le->kind == AD_V_BOOL && !le->u.b)) {
    st = fmt_fail(src->name, AD_EFORMAT, "offset %zu: big-endian or unrecognised legacy checkpoint", pos);
    goto done;
  }
  pos += used;
  o.what = "object pickle";
  o.base_offset = pos;
  o.persistent_load = legacy_persistent_load;
  o.ctx = &c;
  AD_TRY_GOTO(st, fmt_unpickle(&root, doc, d + pos, len - pos, &used, &o), done);
  pos += used;
  o.what = "storage key list";
  o.base_offset = pos;
  o.persistent_load = NULL;
  AD_TRY_GOTO(st, fmt_unpickle(&keys, doc, d + pos, len - pos, &used, &o), done);
  pos += used;
  if (keys->kind != AD_V_LIST) {
    st = fmt_fail(src->name, AD_EFORMAT, "offset %zu: the storage key list is a %s", pos - used, ad_value_kind_name(keys->kind));
    goto done;
  }
  for (size_t i = 0; i < keys->u.seq.n; i++) {
    ad_value *k = keys->u.seq.items[i];
    if (k->kind != AD_V_STR) { st = fmt_fail(src->name, AD_EFORMAT, "storage key %zu is not a string", i); goto done; }
    size_t *idx = strmap_get(&c.map, k->u.str.ptr);
    if (!idx) {
      st = fmt_fail(src->name, AD_EFORMAT, "offset %zu: storage '%s' in the key list is used by no tensor", pos, k->u.str.ptr);
      goto done;
    }
    legacy_root *r = &c.roots[*idx];
    if (r->seen) { st = fmt_fail(src->name, AD_EFORMAT, "storage '%s' is listed twice", k->u.str.ptr); goto done; }
    r->seen = true;
    if (len - pos < 8) {
      st = fmt_fail(src->name, AD_EFORMAT, "offset %zu: truncated before the data of storage '%s'", pos, k->u.str.ptr);
      goto done;
    }
    uint64_t n = fmt_le64(d + pos), nb;
    if (n != r->numel) {
      st = fmt_fail(src->name, AD_EFORMAT, "offset %zu: storage '%s' has %llu elements, its reference says %llu", pos,
                    k->u.str.ptr, (unsigned long long)n, (unsigned long long)r->numel);
      goto done;
    }
    pos += 8;
    if (!fmt_mul_ok(n, r->esize, &nb) || nb > len - pos) {
      st = fmt_fail(src->name, AD_EFORMAT, "offset %zu: storage '%s' needs %llu elements of %zu bytes, %zu bytes are left (truncated?)",
                    pos, k->u.str.ptr, (unsigned long long)n, r->esize, len - pos);
      goto done;
    }
    AD_TRY_GOTO(st, fmt_storage_from_src(&r->storage, src, pos, (size_t)nb, r->esize), done);
    pos += (size_t)nb;
  }
  for (size_t i = 0; i < c.n; i++) {
    if (!c.roots[i].storage) {
      st = fmt_fail(src->name, AD_EFORMAT, "storage '%s' is missing from the data section", c.roots[i].key);
      goto done;
    }
  }
  for (ad_value *s = fmt_doc_first(doc); s; s = s->next_alloc) {
    if (s->kind != AD_V_STORAGE) continue;
    fmt_storage_info *si = s->priv;
    size_t *idx = strmap_get(&c.map, si->key);
    if (!idx) continue;
    si->storage = c.roots[*idx].storage;
    ad_storage_retain(si->storage);
  }
  AD_TRY_GOTO(st, fmt_pickle_finalize(doc, src->name), done);
  ad_doc_set_root(doc, root);
  fmt_doc_set_format(doc, AD_FMT_TORCH_LEGACY);
done:
  for (size_t i = 0; i < c.n; i++) ad_storage_release(c.roots[i].storage);
  free(c.roots);
  strmap_free(&c.map);
  return st;
}

/* ---- writing ---- */
typedef struct {
  const ad_storage **storages;
  ad_dtype *dtypes;
  size_t n, cap;
  /* pointer -> index, open addressing */
  const ad_storage **slots;
  size_t *slot_idx;
  size_t scap;
} save_ctx;

static uint64_t hash_ptr(const void *p) {
  uint64_t x = (uint64_t)(uintptr_t)p;
  x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33;
  return x;
}

static ad_status save_key_of(void *ctx, const ad_tensor *t, int64_t *key) {
  save_ctx *c = ctx;
  const ad_storage *s = t->storage;
  if (c->scap) {
    for (size_t i = hash_ptr(s) & (c->scap - 1); c->slots[i]; i = (i + 1) & (c->scap - 1)) {
      if (c->slots[i] == s) {
        size_t k = c->slot_idx[i];
        if (ad_dtype_size(c->dtypes[k]) != ad_dtype_size(t->dtype) || c->dtypes[k] != t->dtype)
          return AD_FAIL(AD_EDTYPE, "save: tensors of dtypes %s and %s share one storage, which torch cannot represent",
                         ad_dtype_name(c->dtypes[k]), ad_dtype_name(t->dtype));
        *key = (int64_t)k;
        return AD_OK;
      }
    }
  }
  if ((c->n + 1) * 2 > c->scap) {
    size_t nc = c->scap ? c->scap * 2 : 64;
    const ad_storage **ns = calloc(nc, sizeof *ns);
    size_t *ni = calloc(nc, sizeof *ni);
    if (!ns || !ni) { free(ns); free(ni); return AD_FAIL(AD_ENOMEM, "save: out of memory"); }
    for (size_t i = 0; i < c->scap; i++) {
      if (!c->slots[i]) continue;
      size_t j = hash_ptr(c->slots[i]) & (nc - 1);
      while (ns[j]) j = (j + 1) & (nc - 1);
      ns[j] = c->slots[i];
      ni[j] = c->slot_idx[i];
    }
    free(c->slots);
    free(c->slot_idx);
    c->slots = ns;
    c->slot_idx = ni;
    c->scap = nc;
  }
  if (c->n == c->cap) {
    size_t nc = c->cap ? c->cap * 2 : 64;
    const ad_storage **ns = realloc(c->storages, nc * sizeof *ns);
    if (ns) c->storages = ns;
    ad_dtype *nd = realloc(c->dtypes, nc * sizeof *nd);
    if (nd) c->dtypes = nd;
    if (!ns || !nd) return AD_FAIL(AD_ENOMEM, "save: out of memory");
    c->cap = nc;
  }
  size_t j = hash_ptr(s) & (c->scap - 1);
  while (c->slots[j]) j = (j + 1) & (c->scap - 1);
  c->slots[j] = s;
  c->slot_idx[j] = c->n;
  c->storages[c->n] = s;
  c->dtypes[c->n] = t->dtype;
  *key = (int64_t)c->n++;
  return AD_OK;
}

ad_status fmt_torch_save(const char *path, const ad_value *root) {
  save_ctx c;
  memset(&c, 0, sizeof c);
  fmt_buf pkl = {0};
  fmt_zipw *w = NULL;
  ad_status st;
  AD_TRY_GOTO(st, fmt_pickle_dump(&pkl, root, save_key_of, &c), done);
  AD_TRY_GOTO(st, fmt_zipw_open(&w, path), done);
  AD_TRY_GOTO(st, fmt_zipw_add(w, "archive/data.pkl", pkl.p, pkl.n, NULL, 0, 0, 64), done);
  for (size_t i = 0; i < c.n; i++) {
    char name[64];
    snprintf(name, sizeof name, "archive/data/%zu", i);
    const void *bytes;
    void *keep;
    size_t es = ad_dtype_size(c.dtypes[i]);
    AD_TRY_GOTO(st, fmt_storage_host_bytes(&bytes, &keep, c.storages[i]), done);
    st = fmt_zipw_add(w, name, bytes, c.storages[i]->nbytes / es * es, NULL, 0, 0, 64);
    free(keep);
    if (st != AD_OK) goto done;
  }
  AD_TRY_GOTO(st, fmt_zipw_add(w, "archive/version", "3\n", 2, NULL, 0, 0, 64), done);
  st = fmt_zipw_finish(w);
  w = NULL;
done:
  fmt_zipw_abort(w);
  fmt_buf_free(&pkl);
  free(c.storages);
  free(c.dtypes);
  free(c.slots);
  free(c.slot_idx);
  return st;
}
