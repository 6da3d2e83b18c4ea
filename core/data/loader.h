/* loader.h: the data loader's C side — decoding, transforming and batching
 * images on background threads, with a bounded prefetch queue, so a training
 * step never waits for JPEG/PNG decoding; and the readers the datasets need
 * (IDX files as Fashion-MNIST ships them).
 *
 * A loader draws batches from a fixed list of n items. An item is an image
 * file (decoded with the formats code's stb_image decoder) or a row of an
 * in-memory u8 image array (NumPy reference batches, IDX files). Batch s of
 * the endless stream is batch (s mod bpe) of epoch (s div bpe), bpe batches
 * per epoch; with shuffle the items of epoch e are a Fisher-Yates permutation
 * drawn from Philox(seed, e) — so the stream depends on (seed, s) alone and
 * a loader can be put back at any position (ad_loader_seek), which is how a
 * checkpoint resumes it exactly. Random flips are drawn from Philox too, per
 * (seed, epoch, item), never from thread timing.
 *
 * Threads: num_workers pthreads produce batches s = next, next+1, ... at most
 * `prefetch` ahead of the consumer; ad_loader_next hands them out in order.
 * The core stays free of Lua: the bindings own the loader through a box and
 * call ad_loader_free from __gc.
 *
 * Items that cannot be read or decoded are, by option, skipped (the batch
 * comes out shorter; the item is counted once in bad_items and a warning is
 * queued) or reported as an error by ad_loader_next when their batch is
 * taken. */
#ifndef AD_DATA_LOADER_H
#define AD_DATA_LOADER_H

#include <stdbool.h>
#include <stdint.h>
#include "../tensor.h"

typedef enum {
  AD_RESIZE_NONE = 0,   /* images must already have the output size */
  AD_RESIZE_CENTER,     /* guided-diffusion's center_crop_arr: box-halve while >= 2x, bicubic so the image covers
                           (height, width), center crop */
  AD_RESIZE_CROP,       /* center crop only (no scaling) */
  AD_RESIZE_STRETCH     /* bicubic (antialiased) straight to (height, width) */
} ad_resize_mode;

typedef enum {
  AD_LOADER_OUT_SYM = 0,   /* f32 in [-1, 1]: v / 127.5 - 1 */
  AD_LOADER_OUT_UNIT,      /* f32 in [0, 1]: v / 255 */
  AD_LOADER_OUT_U8         /* u8 as decoded */
} ad_loader_out;

typedef struct {
  int64_t batch_size;    /* >= 1 */
  bool shuffle;
  bool drop_last;        /* drop the short last batch of an epoch */
  uint64_t seed;
  int num_workers;       /* 0: batches are made on the calling thread, in ad_loader_next */
  int prefetch;          /* batches made ahead of the consumer (>= 1) */
  int channels;          /* 1 or 3; 0: files 3, arrays as stored */
  int height, width;     /* size after resizing/cropping, before padding; 0: the items' own size */
  ad_resize_mode resize;
  int pad;               /* pixels added on every side after resizing */
  double pad_value;      /* pixel value (0..255) of the padding */
  bool hflip;            /* random horizontal flip, probability 1/2 */
  ad_loader_out out;
  bool error_on_bad;     /* false: skip bad items with a warning; true: ad_loader_next fails */
} ad_loader_opts;

typedef struct ad_loader ad_loader;

/* Items are files: paths[i] (copied), labels[i] (labels may be NULL: no labels). */
ad_status ad_loader_new_files(ad_loader **out, const char *const *paths, const int64_t *labels, int64_t n,
                              const ad_loader_opts *o);
/* Items are rows of a u8 image array (retained): (N, H, W, C) when hwc, (N, C, H, W)
 * when not, or (N, H, W) (one channel). rows[i] in [0, N) picks the row of item i
 * (rows NULL: item i is row i, n == N); labels[i] as above. */
ad_status ad_loader_new_array(ad_loader **out, ad_tensor *images, bool hwc, const int64_t *rows,
                              const int64_t *labels, int64_t n, const ad_loader_opts *o);
void ad_loader_free(ad_loader *l);   /* stops and joins the workers; NULL ok */

/* The next batch: x (B, C, H, W), y (B) i64 labels (NULL without labels),
 * items (B) i64 item numbers (0-based positions in the item list); B <=
 * batch_size. *pos receives the batch's stream position s (may be NULL).
 * Batches whose every item was bad are skipped. */
ad_status ad_loader_next(ad_loader *l, ad_tensor **x, ad_tensor **y, ad_tensor **items, int64_t *pos);
/* Put the stream at position s (the next batch handed out is batch s). */
ad_status ad_loader_seek(ad_loader *l, int64_t s);
int64_t ad_loader_position(const ad_loader *l);       /* batches handed out (or sought to) */
int64_t ad_loader_batches_per_epoch(const ad_loader *l);
int64_t ad_loader_num_items(const ad_loader *l);
int64_t ad_loader_bad_items(const ad_loader *l);      /* distinct items found bad so far */
/* Pops the oldest queued warning into buf (NUL-terminated); false when none. */
bool ad_loader_pop_warning(ad_loader *l, char *buf, size_t n);
/* The permutation of epoch e: perm[i] = the item at position i (n entries). */
ad_status ad_loader_epoch_order(const ad_loader *l, int64_t e, int64_t *perm);

/* The order and flips every loader uses, for loaders written elsewhere (the
 * Lua path for in-memory float tensors) to draw the very same stream:
 * perm (n entries) of epoch e, identity unless shuffle; and whether item is
 * flipped in epoch e. */
void ad_data_permutation(int64_t *perm, int64_t n, uint64_t seed, int64_t e, bool shuffle);
bool ad_data_flip(uint64_t seed, int64_t e, int64_t item);

/* ---- readers ---- */
/* An IDX file (gzip-compressed or plain): the tensor it holds, u8 for type
 * 0x08, i32 for 0x09/0x0B/0x0C, f32 for 0x0D, f64 for 0x0E. */
ad_status ad_read_idx(ad_tensor **out, const char *path);

/* fsync a file (or a directory, so a rename in it is durable) by path. */
ad_status ad_fsync_path(const char *path);

#endif
