/*
 * fuzz_auth.h: drives one side of the handshake's state machine with the messages of a fuzz
 * input. The first byte chooses whether this side has a key; then each message is a length byte
 * and that many bytes. Every reply must fit in TDM__AUTH_MSG_MAX, the machine must end (success
 * or TDM_EAUTH) and must not go on after it ended.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn/conn.h"
#include "fuzz.h"

static void run_side(bool server, const uint8_t *data, size_t size) {
  if (size < 1) return;
  bool key = data[0] & 1;
  data++;
  size--;
  unsigned char nonce[TDM__AUTH_NONCE];
  memset(nonce, 0x5a, sizeof nonce);
  struct tdm__auth a;
  unsigned char out[TDM__AUTH_MSG_MAX];
  size_t out_len = 0;
  tdm__auth_start(&a, server, key ? "fuzz key" : NULL, key ? 8 : 0, nonce, out, &out_len);
  CHECK(out_len <= TDM__AUTH_MSG_MAX);
  int rc = 1;
  while (size > 0 && rc == 1) {
    size_t n = data[0];
    data++;
    size--;
    if (n > size) n = size;
    rc = tdm__auth_step(&a, data, n, out, &out_len);
    CHECK(out_len <= TDM__AUTH_MSG_MAX);
    CHECK(rc == 1 || rc == 0 || rc == TDM_EAUTH);
    data += n;
    size -= n;
  }
  if (rc <= 0) {
    /* Ended: it says so again, and sends nothing more. */
    CHECK(tdm__auth_step(&a, data, size, out, &out_len) == rc && out_len == 0);
  }
}
