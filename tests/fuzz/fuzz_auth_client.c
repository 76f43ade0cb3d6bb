/* fuzz_auth_client.c: the client side of the handshake (see fuzz_auth.h). */
#include "fuzz_auth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  run_side(false, data, size);
  return 0;
}
