/* fuzz_auth_server.c: the listener side of the handshake (see fuzz_auth.h). */
#include "fuzz_auth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  run_side(true, data, size);
  return 0;
}
