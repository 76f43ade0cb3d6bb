/*
 * auth.c: the handshake of listeners and clients: mutual HMAC-SHA256 challenge and response.
 *
 * The listener speaks first, so that a client learns at once whether a key is wanted:
 *
 *   server -> client   HELLO     flags (bit 0: a key is required), server nonce Ns
 *   client -> server   RESPONSE  client nonce Nc, HMAC(key, "tandem-auth-1 client" Ns Nc)
 *   server -> client   WELCOME   HMAC(key, "tandem-auth-1 server" Ns Nc)
 *   client -> server   DONE
 *
 * and without a key, HELLO (bit 0 clear) and DONE. Each message is one frame: "TDMA", version 1,
 * a type byte, the payload. Nonces are 32 bytes from getrandom(), so a response recorded from
 * one handshake is worth nothing in another; the two MACs carry different labels, so a party
 * cannot be made to answer its own challenge (a reflection); both are compared in constant time
 * (CRYPTO_memcmp). The server proves the key only after the client did, and the client sends
 * nothing after the handshake until it has checked that proof, so neither side ever talks to a
 * peer that has not shown it knows the key. Any surprise (a wrong MAC, a message of the wrong
 * type or length, a key on one side only) makes the side that sees it send FAILURE and fail
 * with TDM_EAUTH; the other side reads FAILURE and fails the same way.
 *
 * This authenticates; it does not encrypt. What follows the handshake travels in clear and is
 * not protected against a party that can change packets on the way (docs/conn.md says so).
 *
 * The state machine (tdm__auth_start, tdm__auth_step) works on buffers only; the driver at the
 * end runs it over a connection. tests/fuzz/ feeds the state machine arbitrary messages.
 */
#include <errno.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "conn/conn.h"
#include "platform/platform.h"

enum { HELLO = 1, RESPONSE = 2, WELCOME = 3, FAILURE = 4, DONE = 5 };

#define HEAD         6 /* "TDMA", version, type */
#define VERSION      1
#define HELLO_LEN    (HEAD + 1 + TDM__AUTH_NONCE)
#define RESPONSE_LEN (HEAD + TDM__AUTH_NONCE + TDM__AUTH_MAC)
#define WELCOME_LEN  (HEAD + TDM__AUTH_MAC)

_Static_assert(RESPONSE_LEN <= TDM__AUTH_MSG_MAX, "handshake messages fit");

/* Writes the head of a message of type `type` and returns its length so far. */
static size_t head(unsigned char *out, int type) {
  memcpy(out, "TDMA", 4);
  out[4] = VERSION;
  out[5] = (unsigned char)type;
  return HEAD;
}

/* True when `in` is a message of type `type` with exactly `len` bytes. */
static bool is(const unsigned char *in, size_t n, int type, size_t len) {
  return n == len && memcmp(in, "TDMA", 4) == 0 && in[4] == VERSION && in[5] == type;
}

/* MAC of `label` and both nonces. Returns 0 or -ENOMEM. */
static int mac(const struct tdm__auth *a, const char *label, const unsigned char *ns,
               const unsigned char *nc, unsigned char out[TDM__AUTH_MAC]) {
  unsigned char data[32 + 2 * TDM__AUTH_NONCE];
  size_t l = strlen(label);
  memcpy(data, label, l);
  memcpy(data + l, ns, TDM__AUTH_NONCE);
  memcpy(data + l + TDM__AUTH_NONCE, nc, TDM__AUTH_NONCE);
  unsigned int outlen = 0;
  if (a->key_len > INT32_MAX) return -ENOMEM;
  if (HMAC(EVP_sha256(), a->key, (int)a->key_len, data, l + 2 * TDM__AUTH_NONCE, out, &outlen) ==
          NULL ||
      outlen != TDM__AUTH_MAC)
    return -ENOMEM;
  return 0;
}

#define LABEL_CLIENT "tandem-auth-1 client"
#define LABEL_SERVER "tandem-auth-1 server"

void tdm__auth_start(struct tdm__auth *a, bool server, const void *key, size_t key_len,
                     const unsigned char nonce[TDM__AUTH_NONCE], unsigned char *out,
                     size_t *out_len) {
  memset(a, 0, sizeof *a);
  a->server = server;
  a->key = key_len > 0 ? key : NULL;
  a->key_len = a->key != NULL ? key_len : 0;
  memcpy(a->nonce, nonce, TDM__AUTH_NONCE);
  a->step = 1;
  *out_len = 0;
  if (server) {
    size_t n = head(out, HELLO);
    out[n++] = a->key != NULL ? 1 : 0;
    memcpy(out + n, a->nonce, TDM__AUTH_NONCE);
    *out_len = n + TDM__AUTH_NONCE;
  }
}

/* Ends the handshake with a failure: tells the peer, unless it told us. */
static int fail(struct tdm__auth *a, const unsigned char *in, size_t n, unsigned char *out,
                size_t *out_len) {
  a->step = -1;
  *out_len = is(in, n, FAILURE, HEAD) ? 0 : head(out, FAILURE);
  return TDM_EAUTH;
}

static int server_step(struct tdm__auth *a, const unsigned char *in, size_t n, unsigned char *out,
                       size_t *out_len) {
  if (a->step == 1 && a->key != NULL) {
    if (!is(in, n, RESPONSE, RESPONSE_LEN)) return fail(a, in, n, out, out_len);
    const unsigned char *nc = in + HEAD;
    unsigned char want[TDM__AUTH_MAC];
    if (mac(a, LABEL_CLIENT, a->nonce, nc, want) < 0) return -ENOMEM;
    if (CRYPTO_memcmp(want, in + HEAD + TDM__AUTH_NONCE, TDM__AUTH_MAC) != 0)
      return fail(a, in, n, out, out_len);
    size_t m = head(out, WELCOME);
    if (mac(a, LABEL_SERVER, a->nonce, nc, out + m) < 0) return -ENOMEM;
    *out_len = WELCOME_LEN;
    a->step = 2;
    return 1;
  }
  if ((a->step == 1 && a->key == NULL) || a->step == 2) {
    if (!is(in, n, DONE, HEAD)) return fail(a, in, n, out, out_len);
    a->step = 0;
    return 0;
  }
  return fail(a, in, n, out, out_len);
}

static int client_step(struct tdm__auth *a, const unsigned char *in, size_t n, unsigned char *out,
                       size_t *out_len) {
  if (a->step == 1) {
    if (!is(in, n, HELLO, HELLO_LEN) || in[HEAD] > 1) return fail(a, in, n, out, out_len);
    bool wants_key = in[HEAD] == 1;
    /* A key on one side only: the side without one cannot prove anything, and the side with
     * one does not talk to a peer that has not proved it knows the key. */
    if (wants_key != (a->key != NULL)) return fail(a, in, n, out, out_len);
    if (!wants_key) {
      *out_len = head(out, DONE);
      a->step = 0;
      return 0;
    }
    memcpy(a->peer_nonce, in + HEAD + 1, TDM__AUTH_NONCE);
    size_t m = head(out, RESPONSE);
    memcpy(out + m, a->nonce, TDM__AUTH_NONCE);
    if (mac(a, LABEL_CLIENT, a->peer_nonce, a->nonce, out + m + TDM__AUTH_NONCE) < 0)
      return -ENOMEM;
    *out_len = RESPONSE_LEN;
    a->step = 2;
    return 1;
  }
  if (a->step == 2) {
    if (!is(in, n, WELCOME, WELCOME_LEN)) return fail(a, in, n, out, out_len);
    unsigned char want[TDM__AUTH_MAC];
    if (mac(a, LABEL_SERVER, a->peer_nonce, a->nonce, want) < 0) return -ENOMEM;
    if (CRYPTO_memcmp(want, in + HEAD, TDM__AUTH_MAC) != 0) return fail(a, in, n, out, out_len);
    *out_len = head(out, DONE);
    a->step = 0;
    return 0;
  }
  return fail(a, in, n, out, out_len);
}

int tdm__auth_step(struct tdm__auth *a, const unsigned char *in, size_t in_len, unsigned char *out,
                   size_t *out_len) {
  *out_len = 0;
  if (a->step <= 0) return a->step == 0 ? 0 : TDM_EAUTH;
  return a->server ? server_step(a, in, in_len, out, out_len)
                   : client_step(a, in, in_len, out, out_len);
}

/* ---- The driver --------------------------------------------------------------------------------
 *
 * Handshake messages are frames read with a buffer of TDM__AUTH_MSG_MAX bytes: a peer that
 * sends anything else (a longer frame, a header that is not one) fails the handshake with
 * TDM_EAUTH, and whatever it does, the deadline bounds the wait.
 */

int tdm__conn_handshake(tdm_conn *c, bool server, const void *key, size_t key_len,
                        tdm_deadline deadline) {
  unsigned char nonce[TDM__AUTH_NONCE];
  int rc = tdm__random(nonce, sizeof nonce);
  if (rc < 0) return rc;
  struct tdm__auth a;
  unsigned char in[TDM__AUTH_MSG_MAX], out[TDM__AUTH_MSG_MAX];
  size_t out_len;
  tdm__auth_start(&a, server, key, key_len, nonce, out, &out_len);
  /* Whatever the caller's maximum, a frame longer than a handshake message is refused at its
   * header, before its body is read. */
  size_t max = tdm__conn_set_max(c, TDM__AUTH_MSG_MAX);
  for (;;) {
    if (out_len > 0) {
      int s = tdm_conn_send(c, out, out_len, tdm_deadline_left(deadline));
      /* A failure is reported as such even if the peer did not stay to read why. */
      if (rc == 0 && s < 0) rc = s == -EPIPE ? -ECONNRESET : s;
    }
    if (rc != 0 || a.step == 0) break;
    size_t n = 0;
    int r = tdm_conn_recv_into(c, in, sizeof in, &n, tdm_deadline_left(deadline));
    if (r == -EMSGSIZE || r == -EPROTO) {
      rc = TDM_EAUTH; /* not a handshake message: garbage (-EMSGSIZE: it carried descriptors) */
      break;
    }
    if (r == TDM_EEOF) r = -ECONNRESET;
    if (r < 0) {
      rc = r;
      break;
    }
    rc = tdm__auth_step(&a, in, n, out, &out_len);
    if (rc == 1) rc = 0;
    if (rc < 0 && rc != TDM_EAUTH) break;
  }
  tdm__conn_set_max(c, max);
  OPENSSL_cleanse(&a, sizeof a);
  return rc;
}
