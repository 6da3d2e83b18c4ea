/* load.c: ad_load_file / ad_save_file: picking the format (magic bytes
 * first, then the extension) and handing the bytes to its reader. */
#define _POSIX_C_SOURCE 200809L
#define AD_FORMATS_INTERNAL
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "formats.h"

const char *ad_format_name(ad_format f) {
  switch (f) {
  case AD_FMT_AUTO: return "auto";
  case AD_FMT_TORCH: return "torch";
  case AD_FMT_TORCH_LEGACY: return "torch_legacy";
  case AD_FMT_SAFETENSORS: return "safetensors";
  case AD_FMT_NPY: return "npy";
  case AD_FMT_NPZ: return "npz";
  }
  return "?";
}

static bool ends_with(const char *s, const char *suf) {
  size_t n = strlen(s), m = strlen(suf);
  return n >= m && strcasecmp(s + n - m, suf) == 0;
}

ad_format ad_format_from_path(const char *path) {
  if (!path) return AD_FMT_AUTO;
  if (ends_with(path, ".pt") || ends_with(path, ".pth") || ends_with(path, ".ckpt") || ends_with(path, ".bin"))
    return AD_FMT_TORCH;
  if (ends_with(path, ".safetensors") || ends_with(path, ".st")) return AD_FMT_SAFETENSORS;
  if (ends_with(path, ".npy")) return AD_FMT_NPY;
  if (ends_with(path, ".npz")) return AD_FMT_NPZ;
  return AD_FMT_AUTO;
}

ad_format ad_format_detect(const void *head, size_t n, const char *path) {
  const uint8_t *d = head;
  ad_format ext = ad_format_from_path(path);
  if (n >= 6 && memcmp(d, "\x93NUMPY", 6) == 0) return AD_FMT_NPY;
  if (fmt_is_torch_legacy(d, n)) return AD_FMT_TORCH_LEGACY;
  if (n >= 4 && (fmt_le32(d) == 0x04034b50u || fmt_le32(d) == 0x06054b50u)) {
    /* a zip: an .npz or a torch checkpoint; the loader looks inside when
     * the extension does not say */
    return ext == AD_FMT_NPZ ? AD_FMT_NPZ : ext == AD_FMT_TORCH ? AD_FMT_TORCH : AD_FMT_AUTO;
  }
  if (n >= 9 && d[8] == '{') return AD_FMT_SAFETENSORS;
  return ext;
}

/* a zip of unknown kind: a torch checkpoint has "<dir>/data.pkl" */
static ad_format zip_kind(const fmt_src *src) {
  fmt_zip z;
  if (fmt_zip_open(&z, src) != AD_OK) return AD_FMT_TORCH;   /* the torch reader reports the damage */
  ad_format f = AD_FMT_NPZ;
  for (size_t i = 0; i < z.n; i++) {
    const char *sl = strchr(z.e[i].name, '/');
    if (sl && strcmp(sl, "/data.pkl") == 0) { f = AD_FMT_TORCH; break; }
  }
  fmt_zip_close(&z);
  return f;
}

static ad_status load_src(ad_doc **out, const fmt_src *src, ad_format f) {
  ad_doc *doc = ad_doc_new();
  if (!doc) return AD_ENOMEM;
  if (f == AD_FMT_AUTO) f = ad_format_detect(src->data, src->len, src->name);
  if (f == AD_FMT_AUTO && fmt_is_zip(src)) f = zip_kind(src);
  if (f == AD_FMT_TORCH && !fmt_is_zip(src) && fmt_is_torch_legacy(src->data, src->len)) f = AD_FMT_TORCH_LEGACY;
  ad_status st;
  switch (f) {
  case AD_FMT_TORCH: st = fmt_torch_load(doc, src); break;
  case AD_FMT_TORCH_LEGACY: st = fmt_torch_legacy_load(doc, src); break;
  case AD_FMT_SAFETENSORS: st = fmt_safetensors_load(doc, src); break;
  case AD_FMT_NPY: st = fmt_npy_load(doc, src); break;
  case AD_FMT_NPZ: st = fmt_npz_load(doc, src); break;
  default: {
    const uint8_t *d = src->data;
    bool image = (src->len >= 8 && memcmp(d, "\x89PNG", 4) == 0) || (src->len >= 3 && d[0] == 0xFF && d[1] == 0xD8) ||
                 (src->len >= 2 && d[0] == 'B' && d[1] == 'M');
    st = fmt_fail(src->name, AD_EFORMAT, image ? "this is an image: use ad.image.load"
                                               : "unrecognised format (expected a torch checkpoint, safetensors, .npy or .npz)");
  }
  }
  if (st == AD_OK && !ad_doc_root(doc)) st = fmt_fail(src->name, AD_EFORMAT, "file holds no value");
  if (st != AD_OK) { ad_doc_free(doc); return st; }
  *out = doc;
  return AD_OK;
}

ad_status ad_load_file(ad_doc **out, const char *path, const ad_load_opts *opts) {
  ad_load_opts o = opts ? *opts : (ad_load_opts){0};
  fmt_mapping *m;
  AD_TRY(fmt_map_file(&m, path, o.no_mmap, o.populate));
  fmt_src src = {m->base, m->len, m, path, o.verify_crc};
  ad_status st = load_src(out, &src, o.format);
  fmt_mapping_release(m);   /* mapped storages hold their own references */
  return st;
}

ad_status ad_load_memory(ad_doc **out, const void *data, size_t len, const char *name, const ad_load_opts *opts) {
  ad_load_opts o = opts ? *opts : (ad_load_opts){0};
  fmt_src src = {data, len, NULL, name ? name : "<memory>", o.verify_crc};
  return load_src(out, &src, o.format);
}

ad_status ad_save_file(const char *path, const ad_value *root, const ad_save_opts *opts) {
  ad_save_opts o = opts ? *opts : (ad_save_opts){0};
  ad_format f = o.format != AD_FMT_AUTO ? o.format : ad_format_from_path(path);
  if (!root) return AD_FAIL(AD_EINVAL, "save '%s': nothing to save", path);
  switch (f) {
  case AD_FMT_TORCH: return fmt_torch_save(path, root);
  case AD_FMT_SAFETENSORS: return fmt_safetensors_save(path, root, o.metadata);
  case AD_FMT_NPY: return fmt_npy_save(path, root);
  case AD_FMT_NPZ: return fmt_npz_save(path, root, o.compress);
  case AD_FMT_TORCH_LEGACY: return AD_FAIL(AD_ENOTIMPL, "save '%s': the legacy torch format is read-only; use .pt", path);
  default:
    return AD_FAIL(AD_EINVAL, "save '%s': cannot tell the format from the extension (use .pt, .pth, .safetensors, .npy or .npz, or pass format=)", path);
  }
}
