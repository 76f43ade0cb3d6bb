/*
 * fuzz_frame.c: the frame decoder. The input is written raw into one end of a socketpair and
 * read back through a real connection on the other end, with the receive call, the buffer size
 * and the maximum message chosen by the first bytes, until the connection reports its end. Every
 * message delivered must respect the maximum; the end must be one of the documented codes; and
 * nothing may leak (LeakSanitizer checks the heap, the descriptor count is checked here).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn/conn.h"
#include "fuzz.h"

#include "tandem.h"

static int count_fds(void) {
  int n = 0;
  for (int fd = 0; fd < 256; fd++)
    n += fcntl(fd, F_GETFD) >= 0;
  return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  uint8_t mode = data[0], cap_sel = data[1];
  data += 2;
  size -= 2;

  /* The pure decoder agrees with the encoder. */
  if (size >= TDM__FRAME_HEADER) {
    uint64_t len;
    uint32_t n;
    if (tdm__frame_decode(data, UINT64_MAX, &len, &n) == 0) {
      uint8_t again[TDM__FRAME_HEADER];
      tdm__frame_encode(again, len, n);
      CHECK(memcmp(again, data, TDM__FRAME_HEADER) == 0);
    }
  }

  int fds0 = count_fds();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
  int buf = 1 << 20;
  setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
  size_t off = 0;
  while (off < size) {
    ssize_t r = send(sv[0], data + off, size - off, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (r <= 0) break;
    off += (size_t)r;
  }
  if (mode & 0x80) close(sv[0]); /* end of file after the input, or a peer that stays silent */
  tdm_conn_options o = { .max_message = (size_t)(mode & 0x0f) * 64 + 1 };
  tdm_conn *c;
  if (tdm_conn_open_fd(&c, sv[1], &o) != 0) abort();
  size_t cap = (size_t)cap_sel * 4;
  unsigned char into[1024];
  for (int i = 0; i < 10000; i++) {
    void *m = NULL;
    size_t len = 0, n_fds = 0;
    int fds[4];
    int rc;
    switch ((mode >> 4) & 3) {
    case 0:
      rc = tdm_conn_recv(c, &m, &len, 0);
      break;
    case 1:
      rc = tdm_conn_recv_into(c, into, cap, &len, 0);
      if (rc == -EMSGSIZE) {
        CHECK(len > cap && len <= o.max_message);
        rc = tdm_conn_recv(c, &m, &len, 0);
      }
      break;
    default:
      rc = tdm_conn_recv_fds(c, &m, &len, fds, 4, &n_fds, 0);
      break;
    }
    if (rc == 0) {
      CHECK(len <= o.max_message);
      CHECK(n_fds == 0); /* raw bytes carry no descriptors */
      tdm_free(m);
      continue;
    }
    CHECK(rc == TDM_EEOF || rc == -ETIMEDOUT || rc == -EPROTO || rc == -ECONNRESET ||
          rc == -EMSGSIZE);
    CHECK(tdm_conn_poll(c, 0) == 0 || rc == -ETIMEDOUT);
    break;
  }
  tdm_conn_close(c);
  if (!(mode & 0x80)) close(sv[0]);
  CHECK(count_fds() == fds0);
  return 0;
}
