/*
 * conn.h: what the files of the conn module share: the frame header codec and the handshake's
 * state machine, both pure functions over buffers (so that tests/fuzz/ can drive them without
 * sockets), and the few internal entry points of connections that the listener and wait use.
 */
#ifndef TDM_CONN_CONN_H
#define TDM_CONN_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/internal.h"
#include "tandem/conn.h"

/* ---- Frames ------------------------------------------------------------------------------------
 *
 * A frame is a 16-byte header and `len` bytes: len (u64, big-endian), the number of descriptors
 * attached (u32, big-endian), flags (u32, must be 0).
 */
#define TDM__FRAME_HEADER 16

/* Writes the header of a frame of `len` bytes with `n_fds` descriptors into hdr. */
void tdm__frame_encode(uint8_t hdr[TDM__FRAME_HEADER], uint64_t len, uint32_t n_fds);

/*
 * Reads a header. Returns 0 with the length in *len and the descriptor count in *n_fds, or
 * -EPROTO when the length is beyond `max_len`, the count beyond TDM_CONN_MAX_FDS, or the flags
 * are not zero (outputs untouched).
 */
int tdm__frame_decode(const uint8_t hdr[TDM__FRAME_HEADER], uint64_t max_len, uint64_t *len,
                      uint32_t *n_fds);

/* ---- The handshake -----------------------------------------------------------------------------
 *
 * Handshake messages travel as frames; each starts with "TDMA", the version (1) and a type.
 * The state machine never touches a socket: the driver (listener.c) sends what it produces and
 * feeds it what the peer sends.
 */
#define TDM__AUTH_NONCE   32
#define TDM__AUTH_MAC     32
#define TDM__AUTH_MSG_MAX 96 /* no handshake message is longer */

struct tdm__auth {
  bool server;
  int step;
  const unsigned char *key; /* borrowed; NULL: no key */
  size_t key_len;
  unsigned char nonce[TDM__AUTH_NONCE];      /* ours */
  unsigned char peer_nonce[TDM__AUTH_NONCE]; /* the server's, on the client */
};

/*
 * Starts a handshake on one side with our fresh random `nonce`. Writes the first message to
 * send into out (TDM__AUTH_MSG_MAX bytes) and its length into *out_len (0: the side speaks
 * second).
 */
void tdm__auth_start(struct tdm__auth *a, bool server, const void *key, size_t key_len,
                     const unsigned char nonce[TDM__AUTH_NONCE], unsigned char *out,
                     size_t *out_len);

/*
 * Feeds the peer's next message (any bytes, any length). Writes the reply to send into out
 * (*out_len 0: none), and returns 1 when another message from the peer is needed, 0 when the
 * handshake has succeeded (once the reply is sent), TDM_EAUTH when it failed (the reply is
 * then a failure message, sent to tell the peer, or nothing), or -ENOMEM when the MAC could not
 * be computed.
 */
int tdm__auth_step(struct tdm__auth *a, const unsigned char *in, size_t in_len, unsigned char *out,
                   size_t *out_len);

/* Runs the handshake on connection `c` until the absolute monotonic deadline. Returns 0 or an
 * error of tdm_listener_accept() / tdm_client_connect(). */
int tdm__conn_handshake(tdm_conn *c, bool server, const void *key, size_t key_len,
                        tdm_deadline deadline);

/* ---- Connections --------------------------------------------------------------------------------
 */

#define TDM__CONN_SEND 0x1u
#define TDM__CONN_RECV 0x2u

/*
 * Makes a connection over the connected stream socket `fd`, which it takes on success, able to
 * do `dirs` (TDM__CONN_SEND | TDM__CONN_RECV). Returns 0 or -ENOMEM.
 */
int tdm__conn_new(tdm_conn **out, int fd, unsigned dirs, size_t max_message);

/* Sets the longest message of `c` (before it is shared with other threads) and returns the
 * previous one. The handshake runs with the length of its own longest message. */
size_t tdm__conn_set_max(tdm_conn *c, size_t max_message);

/* True when `c` can receive (not the sending end of a one-way pipe). */
bool tdm__conn_can_recv(const tdm_conn *c);

/* True when a receive on `c` would return at once without reading the socket (a message whose
 * body is all there, end of file, broken). */
bool tdm__conn_ready_now(tdm_conn *c);

#endif /* TDM_CONN_CONN_H */
