/* formats.h: reading and writing checkpoint, array and image files.
 *
 * Formats: PyTorch checkpoints (.pt/.pth, the zip format and the legacy
 * pre-1.6 format, read; the zip format, written), safetensors, NumPy .npy and
 * .npz, and PNG/JPEG/BMP images (read) and PNG (written).
 *
 * Every file is hostile until proven otherwise: each size and offset read from
 * a file is checked against the real file size before it is used, integer
 * arithmetic on them is overflow-checked, nesting depth and table sizes are
 * bounded, and the pickle interpreter only knows the handful of globals a
 * state dict needs (like torch.load(weights_only=True)); any other global is
 * refused, by name, before anything is done with it. Nothing from a file is
 * ever executed.
 *
 * Loading produces a small value tree (dict/list/tuple/str/int/float/bool/
 * none/tensor) owned by an ad_doc arena; the bindings turn it into Lua tables.
 * Tensor data is mapped (mmap, copy-on-write) where the file layout allows,
 * and copied where it does not (misaligned or compressed entries). */
#ifndef AD_FORMATS_H
#define AD_FORMATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "tensor.h"

/* ---- the value tree ------------------------------------------------------ */
typedef enum {
  AD_V_NONE = 0, AD_V_BOOL, AD_V_INT, AD_V_FLOAT, AD_V_STR, AD_V_BYTES,
  AD_V_LIST, AD_V_TUPLE, AD_V_DICT, AD_V_TENSOR,
  /* only while a pickle is being read; never in a finished doc */
  AD_V_GLOBAL, AD_V_STORAGE, AD_V_TSPEC
} ad_value_kind;

typedef struct ad_value ad_value;
struct ad_value {
  ad_value_kind kind;
  uint32_t mark;                       /* traversal scratch (memo ids, visit state) */
  union {
    bool b;
    int64_t i;
    double f;
    struct { char *ptr; size_t len; } str;        /* STR, BYTES: NUL-terminated copy */
    struct { ad_value **items; size_t n, cap; } seq; /* LIST, TUPLE */
    struct { ad_value **keys, **vals; size_t n, cap; } dict; /* insertion order; later keys win */
    ad_tensor *tensor;                             /* TENSOR: one owned reference */
    int global;                                    /* GLOBAL: allow-list id */
  } u;
  void *priv;                          /* STORAGE/TSPEC payload, freed with the doc */
  void (*priv_free)(void *);           /* how (NULL: free()) */
  ad_value *next_alloc;                /* arena list */
};

/* An arena owning a value tree: freeing the doc frees every value (shared and
 * cyclic graphs included) and releases every tensor reference. */
typedef struct ad_doc ad_doc;

typedef enum {
  AD_FMT_AUTO = 0, AD_FMT_TORCH, AD_FMT_TORCH_LEGACY, AD_FMT_SAFETENSORS, AD_FMT_NPY, AD_FMT_NPZ
} ad_format;

ad_doc *ad_doc_new(void);                  /* NULL on OOM (message set) */
void ad_doc_free(ad_doc *d);               /* NULL is a no-op */
ad_value *ad_doc_root(const ad_doc *d);
void ad_doc_set_root(ad_doc *d, ad_value *v);
ad_format ad_doc_format(const ad_doc *d);  /* the format a loaded doc came from */
/* safetensors __metadata__ (a dict of str -> str) of a loaded doc, or NULL */
ad_value *ad_doc_metadata(const ad_doc *d);
void ad_doc_set_metadata(ad_doc *d, ad_value *v);

/* Constructors return NULL on OOM with the message set. */
ad_value *ad_value_none(ad_doc *d);
ad_value *ad_value_bool(ad_doc *d, bool b);
ad_value *ad_value_int(ad_doc *d, int64_t i);
ad_value *ad_value_float(ad_doc *d, double f);
ad_value *ad_value_str(ad_doc *d, const char *s, size_t len);    /* copies */
ad_value *ad_value_bytes(ad_doc *d, const void *s, size_t len);  /* copies */
ad_value *ad_value_list(ad_doc *d);
ad_value *ad_value_tuple(ad_doc *d);
ad_value *ad_value_dict(ad_doc *d);
ad_value *ad_value_tensor(ad_doc *d, ad_tensor *t);              /* retains t */
ad_status ad_value_append(ad_value *seq, ad_value *item);
ad_status ad_value_dict_set(ad_value *dict, ad_value *key, ad_value *val); /* appends */
/* the last value stored under the string key, or NULL */
ad_value *ad_value_dict_get(const ad_value *dict, const char *key);
/* Fails on a cycle or on nesting deeper than max_depth (linear in the graph
 * size, shared sub-trees are visited once). */
ad_status ad_value_check_tree(const ad_value *root, int max_depth);
const char *ad_value_kind_name(ad_value_kind k);

/* ---- loading and saving -------------------------------------------------- */
typedef struct {
  ad_format format;      /* AD_FMT_AUTO: by magic bytes, then by extension */
  bool no_mmap;          /* read() the file into memory instead of mapping it */
  bool populate;         /* fault every mapped page in before returning: all data resident */
  bool verify_crc;       /* also check the CRC-32 of mapped zip entries (pickles and deflated entries always are) */
} ad_load_opts;

/* Loads a checkpoint/array file. The root is a dict (torch, safetensors, npz)
 * or a tensor (npy). Errors name the file and the offset or key at fault. */
ad_status ad_load_file(ad_doc **out, const char *path, const ad_load_opts *opts);
/* Same, from memory (tensors are copied; used by the fuzzers). name is for messages. */
ad_status ad_load_memory(ad_doc **out, const void *data, size_t len, const char *name,
                         const ad_load_opts *opts);
/* Which format a file's first bytes (at least 16 or the whole file) and its
 * name say it is: AD_FMT_AUTO when neither says. */
ad_format ad_format_detect(const void *head, size_t n, const char *path);
ad_format ad_format_from_path(const char *path);   /* by extension only */
const char *ad_format_name(ad_format f);           /* "torch", "safetensors", ... */

typedef struct {
  ad_format format;          /* AD_FMT_AUTO: by extension */
  bool compress;             /* npz: deflate entries (np.savez_compressed) */
  const ad_value *metadata;  /* safetensors: dict of str -> str, or NULL */
} ad_save_opts;

/* Writes root to path (through a temporary file renamed into place, so a
 * failed save leaves an existing file untouched). torch: any tree of dicts,
 * lists, tuples, numbers, strings and tensors (tensors sharing a storage stay
 * views of one storage); safetensors and npz: a flat dict of str -> tensor;
 * npy: one tensor. */
ad_status ad_save_file(const char *path, const ad_value *root, const ad_save_opts *opts);

/* ---- images ---------------------------------------------------------------- */
/* PNG/JPEG/BMP to a (C, H, W) tensor: u8 as stored, or f32 in [0, 1].
 * channels: 0 keeps the file's, 1..4 converts (1 gray, 3 RGB, 4 RGBA). */
ad_status ad_image_load(ad_tensor **out, const char *path, int channels, ad_dtype dt);
ad_status ad_image_load_memory(ad_tensor **out, const void *data, size_t len, int channels,
                               ad_dtype dt, const char *name);
/* Writes a (C, H, W) or (H, W) tensor as PNG, C in 1..4. u8 tensors are
 * written as they are; others are mapped from [lo, hi] to [0, 255] as
 * torchvision's save_image does (x*255 + 0.5, clamped, truncated). */
ad_status ad_image_save_png(const char *path, const ad_tensor *img, double lo, double hi);

typedef struct {
  int nrow;              /* images per row (torchvision's default: 8) */
  int padding;           /* pixels between and around images (torchvision's default: 2) */
  double pad_value;      /* fill of the padding */
  bool normalize;        /* shift to [0, 1] by value_range or by min/max */
  bool has_range;
  double lo, hi;         /* value_range when has_range */
  bool scale_each;       /* normalize each image by its own min/max */
} ad_image_grid_args;
/* torchvision.utils.make_grid: (N, C, H, W) or (C, H, W) or (H, W) -> (C', H', W') */
ad_status ad_image_grid(ad_tensor **out, const ad_tensor *batch, const ad_image_grid_args *a);

/* ---- internals shared by the sources in core/formats/ ---------------------- */
#ifdef AD_FORMATS_INTERNAL

/* A read-only view of a whole file, refcounted so that tensors mapped from it
 * keep it alive after the loader returns. */
typedef struct fmt_mapping {
  _Atomic long refcount;
  void *base;            /* munmap()ed on release: the file, or anonymous memory it was read into */
  size_t len;
  bool is_mmap;          /* set once base is valid */
} fmt_mapping;

typedef struct {
  const uint8_t *data;
  size_t len;
  fmt_mapping *map;      /* owner of data; NULL: data belongs to the caller, tensors copy */
  const char *name;      /* file name for messages */
  bool verify_crc;
} fmt_src;

ad_status fmt_map_file(fmt_mapping **out, const char *path, bool no_mmap, bool populate);
void fmt_mapping_retain(fmt_mapping *m);
void fmt_mapping_release(fmt_mapping *m);

/* Records "load 'name': msg" (where is part of msg) and returns code. */
ad_status fmt_fail(const char *name, ad_status code, const char *fmt, ...) AD_PRINTF(3, 4);

/* A storage over src bytes [off, off + nbytes): a mapped view when src is a
 * mapping and data + off is aligned to align, else a fresh copy. The caller
 * has checked the range. */
ad_status fmt_storage_from_src(ad_storage **out, const fmt_src *src, size_t off, size_t nbytes, size_t align);

/* overflow-checked size arithmetic */
static inline bool fmt_mul_ok(uint64_t a, uint64_t b, uint64_t *r) { return !__builtin_mul_overflow(a, b, r); }
static inline bool fmt_add_ok(uint64_t a, uint64_t b, uint64_t *r) { return !__builtin_add_overflow(a, b, r); }
/* numel of a shape with every dim >= 0, and numel * esize; false on overflow or > 2^62 bytes */
bool fmt_shape_bytes(int ndim, const int64_t *shape, size_t esize, uint64_t *numel, uint64_t *nbytes);
static inline uint16_t fmt_le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t fmt_le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t fmt_le64(const uint8_t *p) { return fmt_le32(p) | (uint64_t)fmt_le32(p + 4) << 32; }

bool fmt_utf8_valid(const unsigned char *s, size_t n);

/* growable byte buffer for writers */
typedef struct { uint8_t *p; size_t n, cap; bool oom; } fmt_buf;
void fmt_buf_put(fmt_buf *b, const void *data, size_t n);
void fmt_buf_byte(fmt_buf *b, uint8_t c);
void fmt_buf_le16(fmt_buf *b, uint16_t v);
void fmt_buf_le32(fmt_buf *b, uint32_t v);
void fmt_buf_le64(fmt_buf *b, uint64_t v);
void fmt_buf_printf(fmt_buf *b, const char *fmt, ...) AD_PRINTF(2, 3);
void fmt_buf_free(fmt_buf *b);

/* A file written to "<path>.tmp.<pid>" and renamed over path on commit. */
typedef struct fmt_out fmt_out;
ad_status fmt_out_open(fmt_out **out, const char *path);
ad_status fmt_out_write(fmt_out *o, const void *data, size_t n);
uint64_t fmt_out_pos(const fmt_out *o);
ad_status fmt_out_commit(fmt_out *o);   /* flushes, closes, renames; frees o */
void fmt_out_abort(fmt_out *o);         /* closes, removes the temporary; frees o; NULL ok */

/* A host-side, contiguous copy (or reference) of t's bytes for writing:
 * *bytes points at numel*esize bytes owned by *keep (release it after). */
ad_status fmt_host_bytes(const void **bytes, ad_tensor **keep, const ad_tensor *t);
/* the bytes of a whole storage, on the host: *keep owns them when not NULL */
ad_status fmt_storage_host_bytes(const void **bytes, void **keep, const ad_storage *s);

/* ---- zip ---- */
typedef struct {
  const char *name;       /* NUL-terminated, in fmt_zip.names */
  uint64_t data_off;      /* file offset of the entry's (compressed) data */
  uint64_t csize, usize;
  uint32_t crc;
  int method;             /* 0 stored, 8 deflate */
} fmt_zip_entry;
typedef struct {
  fmt_zip_entry *e;       /* central-directory order */
  size_t n;
  size_t *sorted;         /* indices of e sorted by name */
  char *names;
} fmt_zip;
bool fmt_is_zip(const fmt_src *src);
ad_status fmt_zip_open(fmt_zip *z, const fmt_src *src);
void fmt_zip_close(fmt_zip *z);
const fmt_zip_entry *fmt_zip_find(const fmt_zip *z, const char *name);
/* the entry's uncompressed bytes in a malloc'd buffer (CRC checked) */
ad_status fmt_zip_read(uint8_t **buf, const fmt_src *src, const fmt_zip_entry *e);
/* the first nbytes of the entry as a storage: mapped when stored and aligned */
ad_status fmt_zip_storage(ad_storage **out, const fmt_src *src, const fmt_zip_entry *e,
                          uint64_t nbytes, size_t align);

typedef struct fmt_zipw fmt_zipw;
ad_status fmt_zipw_open(fmt_zipw **w, const char *path);
/* an entry made of two consecutive parts (a header and a payload); method 0
 * or 8; align: data offset multiple (stored entries only, 0 = none) */
ad_status fmt_zipw_add(fmt_zipw *w, const char *name, const void *a, size_t na, const void *b,
                       size_t nb, int method, size_t align);
ad_status fmt_zipw_finish(fmt_zipw *w);   /* frees w */
void fmt_zipw_abort(fmt_zipw *w);         /* frees w; NULL ok */

/* ---- per-format entry points ---- */
ad_status fmt_torch_load(ad_doc *doc, const fmt_src *src);          /* zip */
ad_status fmt_torch_legacy_load(ad_doc *doc, const fmt_src *src);
bool fmt_is_torch_legacy(const uint8_t *d, size_t n);              /* by the magic-number pickle */
ad_status fmt_torch_save(const char *path, const ad_value *root);
ad_status fmt_safetensors_load(ad_doc *doc, const fmt_src *src);
ad_status fmt_safetensors_save(const char *path, const ad_value *root, const ad_value *metadata);
ad_status fmt_npy_load(ad_doc *doc, const fmt_src *src);
ad_status fmt_npz_load(ad_doc *doc, const fmt_src *src);
ad_status fmt_npy_save(const char *path, const ad_value *root);
ad_status fmt_npz_save(const char *path, const ad_value *root, bool compress);
void fmt_doc_set_format(ad_doc *d, ad_format f);

/* ---- pickle ---- */
typedef struct fmt_unpickler fmt_unpickler;
typedef ad_status (*fmt_persistent_load_fn)(void *ctx, fmt_unpickler *u, ad_value *pid, ad_value **out);
typedef struct {
  const char *name;            /* file name, for messages */
  const char *what;            /* which pickle inside the file, e.g. "archive/data.pkl" */
  uint64_t base_offset;        /* added to offsets in messages */
  fmt_persistent_load_fn persistent_load;   /* NULL: persistent ids are refused */
  void *ctx;
} fmt_unpickle_opts;
/* Runs the pickle in data[0, len) up to its STOP; *consumed (optional)
 * receives its length. */
ad_status fmt_unpickle(ad_value **out, ad_doc *doc, const uint8_t *data, size_t len,
                       size_t *consumed, const fmt_unpickle_opts *o);
/* fails with "<name>: <what> offset N: msg" at the current opcode */
ad_status fmt_unpickle_fail(fmt_unpickler *u, ad_status code, const char *fmt, ...) AD_PRINTF(3, 4);
ad_doc *fmt_unpickler_doc(fmt_unpickler *u);

/* payload of AD_V_STORAGE */
typedef struct {
  ad_dtype dtype;              /* dtype of the storage class */
  bool dtype_ok;               /* false for storage classes advdiff has no dtype for */
  const char *type_name;       /* e.g. "torch.FloatStorage" */
  uint64_t numel;              /* elements the checkpoint declares */
  ad_storage *storage;         /* resolved bytes (owned ref), NULL until resolved */
  int64_t elem_offset;         /* legacy views: offset into the root storage */
  char *key;                   /* storage key (legacy: root key) */
} fmt_storage_info;
/* payload of AD_V_TSPEC: a tensor waiting for its storage */
typedef struct {
  ad_value *storage;           /* AD_V_STORAGE */
  int64_t offset;
  int ndim;
  int64_t shape[AD_MAX_DIMS], strides[AD_MAX_DIMS];
  bool requires_grad;
} fmt_tensor_spec;
/* Turns every TSPEC into a TENSOR (checking extents against the resolved
 * storages), every STORAGE into a 1-D tensor and every GLOBAL into its name. */
ad_status fmt_pickle_finalize(ad_doc *doc, const char *name);
/* 1 when g is an allowed storage-class global: its dtype (ok false when
 * advdiff has none), element size and class name */
int fmt_pickle_storage_class(const ad_value *g, ad_dtype *dt, bool *ok, size_t *esize, const char **name);
void *fmt_doc_alloc_priv(ad_doc *d, ad_value *v, size_t size);   /* zeroed; owned by the doc */
ad_value *fmt_doc_first(const ad_doc *d);                        /* the arena list */
ad_value *fmt_value_new(ad_doc *d, ad_value_kind k);

/* Pickles root (protocol 2, as torch.save writes it) into buf; storages are
 * numbered in first-use order and reported through the callback. */
typedef ad_status (*fmt_storage_key_fn)(void *ctx, const ad_tensor *t, int64_t *key);
ad_status fmt_pickle_dump(fmt_buf *buf, const ad_value *root, fmt_storage_key_fn key_of, void *ctx);

/* ---- JSON (safetensors headers) ---- */
ad_status fmt_json_parse(ad_value **out, ad_doc *doc, const char *s, size_t len, const char *name,
                         uint64_t base_offset);
void fmt_json_string(fmt_buf *b, const char *s, size_t len);

/* ---- npy ---- */
/* Parses an .npy held in src[off, off+len) into a tensor; backing (optional)
 * is a storage whose bytes are src->data (npz entries inflated in memory). */
ad_status fmt_npy_parse(ad_tensor **out, const fmt_src *src, uint64_t off, uint64_t len,
                        ad_storage *backing, const char *where);
ad_status fmt_npy_header(fmt_buf *b, const ad_tensor *t, const char *name);

#endif /* AD_FORMATS_INTERNAL */
#endif
