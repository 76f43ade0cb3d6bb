/*
 * fuzz_manager.c: the manager's request decoder and every object behind it. The input is a
 * sequence of requests, each sent by one of four connections of one server (no sockets: the
 * server's own entry point for a request). Connections 0 to 2 have greeted the server (0 as
 * client A, 1 and 2 as client B); connection 3 has not. Each request is framed in the input as
 *   u8 flags | u16 length (little-endian) | request bytes
 * flags: bits 0-1 the connection; bit 2 write the server's instance into the request (so that
 * requests reach objects, whose ids count from 1); bit 3 drop the connection after the request
 * (its client's references and locks go when it was the client's last); bit 4 let every
 * deadline pass. At the end every deadline passes and the server is freed: LeakSanitizer checks
 * that nothing was lost, and the server must never crash or trip a check, whatever it is sent.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "manager/manager.h"

/* A custom type: a counter that adds what op 1 is given and reports its total with op 2. */
static int counter_create(void **state, const void *arg, size_t len) {
  (void)arg;
  if (len > 8) return -EINVAL;
  *state = calloc(1, sizeof(uint64_t));
  return *state != NULL ? 0 : -ENOMEM;
}

static int counter_call(void *state, uint32_t op, const void *in, size_t len, void **out,
                        size_t *out_len) {
  uint64_t *n = state;
  if (op == 1) {
    *n += len;
    return 0;
  }
  if (op == 2) {
    *out = malloc(sizeof *n);
    if (*out == NULL) return -ENOMEM;
    memcpy(*out, n, sizeof *n);
    *out_len = sizeof *n;
    return (int)(*n & 0x7fff);
  }
  (void)in;
  return -ENOSYS;
}

static void counter_destroy(void *state) {
  free(state);
}

static const tdm_manager_type counter = { "counter", counter_create, counter_call,
                                          counter_destroy };

static bool greet(struct tdm__msrv *s, struct tdm__mconn *c, uint64_t client) {
  struct tdm__wbuf w = { 0 };
  tdm__mreq_encode(&w, &(struct tdm__mreq){ .op = MOP_HELLO });
  tdm__wb_u64(&w, client);
  tdm__wb_u32(&w, TDM__MGR_PROTOCOL);
  bool ok = !w.failed && tdm__msrv_request(s, c, w.p, w.len);
  tdm__wb_free(&w);
  return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const tdm_manager_type *types[] = { &counter };
  struct tdm__msrv *s;
  CHECK(tdm__msrv_new(&s, types, 1, 1 << 20) == 0);
  struct tdm__mconn *c[4];
  for (int i = 0; i < 4; i++) {
    c[i] = tdm__msrv_fake_conn(s);
    CHECK(c[i] != NULL);
  }
  CHECK(greet(s, c[0], 0xA) && greet(s, c[1], 0xB) && greet(s, c[2], 0xB));
  uint8_t *req = malloc(65536 + 16);
  CHECK(req != NULL);
  uint64_t instance = tdm__msrv_instance(s);
  bool dropped[4] = { false };
  while (size >= 3) {
    uint8_t flags = data[0];
    size_t len = (size_t)data[1] | (size_t)data[2] << 8;
    data += 3;
    size -= 3;
    if (len > size) len = size;
    memcpy(req, data, len);
    data += len;
    size -= len;
    if ((flags & 4) && len >= 16)
      for (int i = 0; i < 8; i++)
        req[8 + i] = (uint8_t)(instance >> (8 * i));
    int k = flags & 3;
    if (!dropped[k] && !tdm__msrv_request(s, c[k], req, len)) dropped[k] = true;
    /* A reply is a frame: at least a header and a status. */
    size_t out = tdm__mconn_output(c[k], true);
    CHECK(out == 0 || out >= 16 + 4);
    if ((flags & 8) && !dropped[k]) {
      tdm__msrv_drop(s, c[k]);
      dropped[k] = true;
    }
    if (flags & 16) tdm__msrv_expire(s, INT64_MAX);
  }
  tdm__msrv_expire(s, INT64_MAX);
  free(req);
  tdm__msrv_free(s);
  return 0;
}
