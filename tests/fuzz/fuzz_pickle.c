/* fuzz_pickle.c: libFuzzer harness for the restricted unpickler alone. The
 * persistent ids it meets are answered with a 64-element storage of the
 * class the pickle names, so tensor rebuilding and its extent checks run too. */
#include "fuzz_common.h"

static void info_free(void *p) {
  fmt_storage_info *si = p;
  ad_storage_release(si->storage);
  free(si);
}

static ad_status fake_storage(void *ctx, fmt_unpickler *u, ad_value *pid, ad_value **out) {
  (void)ctx;
  if (pid->kind != AD_V_TUPLE || pid->u.seq.n < 2) return fmt_unpickle_fail(u, AD_EFORMAT, "bad pid");
  ad_value *v = fmt_value_new(fmt_unpickler_doc(u), AD_V_STORAGE);
  if (!v) return AD_ENOMEM;
  fmt_storage_info *si = fmt_doc_alloc_priv(fmt_unpickler_doc(u), v, sizeof *si);
  if (!si) return AD_ENOMEM;
  v->priv_free = info_free;
  size_t es;
  if (!fmt_pickle_storage_class(pid->u.seq.items[1], &si->dtype, &si->dtype_ok, &es, &si->type_name))
    return fmt_unpickle_fail(u, AD_EFORMAT, "no storage class");
  si->numel = 64;
  if (ad_storage_new(&si->storage, 64 * es, AD_CPU) != AD_OK) return AD_ENOMEM;
  memset(si->storage->data, 0, 64 * es);
  *out = v;
  return AD_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ad_doc *doc = ad_doc_new();
  if (!doc) return 0;
  fmt_unpickle_opts o = {"fuzz", "pickle", 0, fake_storage, NULL};
  ad_value *root;
  size_t used;
  if (fmt_unpickle(&root, doc, data, size, &used, &o) == AD_OK && fmt_pickle_finalize(doc, "fuzz") == AD_OK) {
    if (ad_value_check_tree(root, 100) == AD_OK) fuzz_walk(root, 0);
  }
  ad_doc_free(doc);
  return 0;
}
