/* fuzz_image.c: libFuzzer harness for image decoding (stb_image behind our
 * checks). The first byte picks the channel conversion and dtype. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  int channels = data[0] % 5;
  ad_dtype dt = (data[0] >> 4) & 1 ? AD_F32 : AD_U8;
  ad_tensor *t = NULL;
  if (ad_image_load_memory(&t, data + 1, size - 1, channels, dt, "fuzz") == AD_OK) {
    fuzz_touch_tensor(t);
    ad_tensor_release(t);
  }
  return 0;
}
