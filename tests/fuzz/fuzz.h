/*
 * fuzz.h: what every fuzz target shares: a check that stays in every build (assert() is
 * compiled out under NDEBUG) and aborts, which libFuzzer reports as a crash with its input.
 */
#ifndef TDM_FUZZ_H
#define TDM_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
      abort();                                                                 \
    }                                                                          \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif /* TDM_FUZZ_H */
