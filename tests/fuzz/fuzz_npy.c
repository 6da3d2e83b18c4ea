/* fuzz_npy.c: libFuzzer harness for the npy reader (see fuzz_common.h). */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fuzz_load(data, size, AD_FMT_NPY); }
