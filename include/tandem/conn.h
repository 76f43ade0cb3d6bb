/*
 * tandem/conn.h: connections (Python's multiprocessing.Pipe and Connection,
 * multiprocessing.connection.wait, Listener and Client with an authkey).
 *
 * A connection carries messages: byte strings of 0 to max_message bytes, delivered whole and in
 * order, each optionally with open descriptors attached (over Unix sockets). It is one end of a
 * stream socket: a socketpair (tdm_pipe), a Unix socket or a TCP connection (tdm_listener_accept,
 * tdm_client_connect), or a connected socket the caller adopts (tdm_conn_open_fd, for instance
 * one end of a pipe passed to a child in tdm_process_options.pass_fds).
 *
 * Framing. Every message travels as a 16-byte header, then its bytes: the length as a 64-bit
 * big-endian integer, the number of descriptors attached as a 32-bit big-endian integer (the
 * descriptors ride with the header, SCM_RIGHTS), and 32 bits of flags that must be zero. A
 * header whose length is beyond the receiver's max_message is rejected before anything is
 * allocated. docs/conn.md describes the format and the handshake byte for byte.
 *
 * Timeouts and partial messages. A receive that times out in the middle of a message keeps what
 * it has read in the handle and the next receive goes on from there: nothing is lost. A send
 * cannot take back bytes that left: when its timeout runs out after part of a message went
 * out, the connection is broken (the call returns -ECONNABORTED, and so does every later call
 * but tdm_conn_close()). A send whose timeout runs out before its first byte returns -ETIMEDOUT
 * and the connection is intact.
 *
 * The end of a connection. TDM_EEOF: the peer closed its end between two messages (nothing was
 * lost); it is returned again by every later receive. -ECONNRESET: the peer went away in the
 * middle of a message (a truncated frame: the part received is dropped) or reset the
 * connection (a peer killed with messages it had not read, a TCP reset); the connection is
 * broken. A send to a peer that is gone returns -EPIPE; SIGPIPE is never raised.
 *
 * Broken connections. A protocol error (-EPROTO), a truncated frame or reset (-ECONNRESET), or a
 * send cut by its timeout (-ECONNABORTED) breaks the connection: the failing call returns that
 * code, and every later send and receive returns -ECONNABORTED (tdm_conn_poll() and
 * tdm_conn_wait() report it ready, so that a waiter wakes up to see it). Only tdm_conn_close() is
 * left to do.
 *
 * Thread safety. Every function may be called from any thread. Sends are serialised by a lock
 * of the handle, and so are receives, so two threads that send at once never interleave their
 * messages; a send and a receive run at the same time. Closing a handle while another thread
 * uses it is a bug.
 *
 * Fork. A fork child inherits the handle and its socket; both processes then share one stream,
 * so use each end in one process only and close the other's copy (as with Python's Pipe). A
 * fork made while another thread was inside a send or a receive leaves that handle's lock held
 * in the child: close it there. Descriptors are close-on-exec; pass an end to a spawn or
 * forkserver child through tdm_process_options.pass_fds (tdm_conn_fd()) and adopt it there with
 * tdm_conn_open_fd().
 */
#ifndef TANDEM_CONN_H
#define TANDEM_CONN_H

#include "tandem/base.h"
#include "tandem/clock.h"
#include "tandem/error.h"
#include "tandem/process.h"
#include "tandem/queue.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tdm_conn tdm_conn;
typedef struct tdm_listener tdm_listener;

/* The default longest message, in bytes (64 MiB). */
#define TDM_CONN_MAX_MESSAGE_DEFAULT ((size_t)64 << 20)

/* The most descriptors one message may carry. */
#define TDM_CONN_MAX_FDS 64

/* The default time a connect or accept may spend authenticating (and connecting). */
#define TDM_CONN_HANDSHAKE_DEFAULT TDM_S(10)

/* Flags for tdm_conn_options.flags. */
/* tdm_pipe: the first end receives only, the second sends only (Pipe(duplex=False)). */
#define TDM_CONN_ONEWAY       0x1u
/* Listener, client: allow TCP without an authkey (anyone who reaches the port may talk). */
#define TDM_CONN_INSECURE_TCP 0x2u

/* Options for every call that makes a connection or a listener; NULL means all defaults. */
typedef struct tdm_conn_options {
  unsigned flags;     /* TDM_CONN_* above */
  size_t max_message; /* longest message sent or received, in bytes; 0: 64 MiB */
  /* Listener and client: the shared secret both sides must know (copied). NULL or a length of
   * 0: no authentication, which TCP refuses unless TDM_CONN_INSECURE_TCP is set. */
  const void *authkey;
  size_t authkey_len;
  int64_t handshake_timeout; /* listener, client: how long connecting and authenticating may
                                take; 0: TDM_CONN_HANDSHAKE_DEFAULT; TDM_FOREVER: no limit */
  int backlog;               /* listener: pending connections; 0: 128 */
  unsigned mode;             /* listener on a Unix socket path: its permission bits; 0: 0600 */
} tdm_conn_options;

/* ---- Connections -------------------------------------------------------------------------- */

/*
 * Makes a connected pair of connections over a socketpair (Python's Pipe()). Duplex by
 * default: each end sends and receives. With TDM_CONN_ONEWAY (Pipe(duplex=False)) *a only
 * receives and *b only sends; calls in the wrong direction return -EBADF. Both handles are the
 * caller's, to close with tdm_conn_close(); the sockets are close-on-exec. Thread-safe.
 * Returns 0; -EINVAL for NULL outputs or unknown flags; -ENOMEM; -EMFILE, -ENFILE.
 */
TDM_API int tdm_pipe(tdm_conn **a, tdm_conn **b, const tdm_conn_options *opt);

/*
 * Adopts `fd`, a connected stream socket (Unix or TCP; one end of a tdm_pipe() passed to a child,
 * say), as a duplex connection. On success the handle owns the descriptor (tdm_conn_close()
 * closes it) and makes it close-on-exec; on failure the caller still owns it. Only the two ends
 * of a connection agree on the framing: both must be tandem connections. No handshake is
 * made. Returns 0; -EINVAL for a NULL output, unknown flags or a TDM_CONN_ONEWAY flag;
 * -EBADF; -ENOTSOCK; -EPROTOTYPE when it is not a stream socket; -ENOMEM.
 */
TDM_API int tdm_conn_open_fd(tdm_conn **out, int fd, const tdm_conn_options *opt);

/*
 * Closes the connection and frees the handle: the socket (the peer then reads TDM_EEOF, or
 * -ECONNRESET in the middle of a message), a message half received, descriptors received and
 * not handed over. Returns 0 (errors of close() are not reported: the descriptor is gone
 * anyway); NULL is a no-op. No thread may use the handle during or after the call.
 */
TDM_API int tdm_conn_close(tdm_conn *c);

/*
 * The connection's socket, owned by the handle: to poll it (readable means a message, or end
 * of file, is coming), or to pass it to a child (tdm_process_options.pass_fds). Reading or
 * writing it directly breaks the framing.
 */
TDM_API int tdm_conn_fd(const tdm_conn *c);

/*
 * Sends a message of `len` bytes (0 is a valid message), waiting up to `timeout` for room
 * (Python's send_bytes). When it returns 0 the message is in the socket; the caller keeps
 * `buf`. Returns 0, or:
 *   -EMSGSIZE      len is beyond the connection's max_message (nothing sent);
 *   -ETIMEDOUT     nothing could be sent before the timeout (0: at once); the connection is
 *                  intact;
 *   -ECONNABORTED  the timeout ran out after part of the message went out, or the connection
 *                  was broken before (see the top of this file);
 *   -EPIPE         the peer has closed its end or is gone;
 *   -EBADF         the receiving end of a one-way pipe;
 *   -EINVAL        buf is NULL with a length;
 *   another negative errno of sendmsg() (-ENOBUFS...).
 */
TDM_API int tdm_conn_send(tdm_conn *c, const void *buf, size_t len, int64_t timeout);

/*
 * Sends a message with the `n_fds` descriptors `fds` attached (at most TDM_CONN_MAX_FDS), over a
 * Unix socket. The receiver gets new descriptors for the same open files; the caller keeps
 * (and may close) its own as soon as the call returns. Results as tdm_conn_send(), and
 * -EINVAL for more than TDM_CONN_MAX_FDS descriptors (or fds NULL with a count), -EBADF when
 * one of them is not open, -EOPNOTSUPP over TCP.
 */
TDM_API int tdm_conn_send_fds(tdm_conn *c, const void *buf, size_t len, const int *fds,
                              size_t n_fds, int64_t timeout);

/*
 * Receives the next message, waiting up to `timeout` for it (Python's recv_bytes). On success
 * *msg is a new buffer allocated with tandem's allocator, owned by the caller (free it with
 * tdm_free(); a 0-byte message is a valid pointer too), and *len its length. Returns 0, or:
 *   TDM_EEOF       the peer closed its end, between messages;
 *   -ETIMEDOUT     no whole message before the timeout (0: at once); what arrived of one is kept
 *                  for the next call;
 *   -EMSGSIZE      the message carries descriptors: take it with tdm_conn_recv_fds(); it stays;
 *   -ENOMEM        the message could not be allocated; it stays;
 *   -EMFILE        the message carried descriptors that this process could not receive (its
 *                  descriptor limit): the message was dropped, the connection is intact;
 *   -ECONNRESET    a truncated message or a reset (see the top of this file; broken);
 *   -EPROTO        the peer broke the framing: a message beyond max_message (refused before
 *                  anything was allocated), flags that are not zero, descriptors that do not
 *                  match the header (broken);
 *   -ECONNABORTED  the connection was broken before;
 *   -EBADF         the sending end of a one-way pipe;
 *   another negative errno of recvmsg().
 * On failure *msg and *len are untouched.
 */
TDM_API int tdm_conn_recv(tdm_conn *c, void **msg, size_t *len, int64_t timeout);

/*
 * Receives the next message into the caller's buffer `buf` of `cap` bytes (Python's
 * recv_bytes_into) and stores its length in *len. When the message is longer than cap, returns
 * -EMSGSIZE with the length needed in *len and loses nothing: the message stays, for a next
 * call with a larger buffer (or tdm_conn_recv()). A message that carries descriptors is
 * -EMSGSIZE too, with its length in *len (take it with tdm_conn_recv_fds()). No allocation is
 * made, except that a timeout in the middle of a message moves the part received into the
 * handle. Other results as tdm_conn_recv().
 */
TDM_API int tdm_conn_recv_into(tdm_conn *c, void *buf, size_t cap, size_t *len, int64_t timeout);

/*
 * Receives the next message as tdm_conn_recv() does, and the descriptors attached to it into
 * fds[0..*n_fds) (room for `max_fds`). The descriptors are new in this process, close-on-exec,
 * and the caller's to close. When the message carries more than max_fds descriptors, returns
 * -EMSGSIZE with their number in *n_fds (and the length in *len) and loses nothing: the
 * message and its descriptors stay for a next call with more room (the handle holds the
 * descriptors meanwhile, and closes them if it is closed first). Other results as
 * tdm_conn_recv(); on failure *msg is untouched.
 */
TDM_API int tdm_conn_recv_fds(tdm_conn *c, void **msg, size_t *len, int *fds, size_t max_fds,
                              size_t *n_fds, int64_t timeout);

/*
 * Waits up to `timeout` until a receive would start at once (Python's poll): a message has
 * begun to arrive, the peer closed its end, or the connection is broken (a receive would
 * then return its error at once). Takes nothing. A message whose first bytes are there may
 * still need time to arrive whole. Returns 0 when ready; -ETIMEDOUT (timeout 0: not ready now);
 * -EBADF for the sending end of a one-way pipe; an error of poll().
 */
TDM_API int tdm_conn_poll(tdm_conn *c, int64_t timeout);

/* The connection's longest message, in bytes. */
TDM_API size_t tdm_conn_max_message(const tdm_conn *c);

/* ---- Waiting on many objects (Python's multiprocessing.connection.wait) --------------------- */

/* What a tdm_wait_entry names. */
typedef enum tdm_wait_kind {
  TDM_WAIT_CONN = 1, /* ready when tdm_conn_poll() would return 0 */
  TDM_WAIT_QUEUE,    /* ready when tdm_queue_ready() is true */
  TDM_WAIT_PROCESS,  /* ready when the child has ended (its sentinel is readable) */
  TDM_WAIT_LISTENER, /* ready when a client is waiting to be accepted */
  TDM_WAIT_FD,       /* ready when the descriptor is readable, hung up or in error */
} tdm_wait_kind;

/* One object to wait for. The caller fills kind and the member of the union it names. */
typedef struct tdm_wait_entry {
  tdm_wait_kind kind;
  union {
    tdm_conn *conn;
    tdm_queue *queue;
    tdm_process *process;
    tdm_listener *listener;
    int fd;
  };
  bool ready; /* output: set by tdm_conn_wait() */
} tdm_wait_entry;

/*
 * Waits up to `timeout` until at least one of the `n` entries is ready, then marks every entry
 * that is ready (entry.ready) and returns how many are (at least 1). Takes nothing from any of
 * them. Returns -ETIMEDOUT when none became ready in time (timeout 0: none is ready now);
 * -EINVAL for an unknown kind or a NULL object; -EBADF for a descriptor that is not open or
 * for the sending end of a one-way pipe; -ENOMEM. With n == 0 it sleeps until the timeout.
 *
 * Descriptors, connections, listeners and process sentinels are waited for together in one
 * poll(), so they wake the call at once. Queues are futex-based and have no descriptor: with
 * queues in the set the call polls in slices that grow from 50 us to at most 1 ms and checks the
 * queues between, so a queue that becomes ready is seen within about 1 ms (a set that holds
 * only one queue waits on its futex and wakes at once). Thread-safe; the objects must stay open
 * during the call.
 */
TDM_API int tdm_conn_wait(tdm_wait_entry *set, size_t n, int64_t timeout);

/* ---- Listeners and clients ---------------------------------------------------------------- */

/*
 * Opens a listener on `address` (Python's Listener) and returns it in *out, owned by the
 * caller until tdm_listener_close(). Addresses:
 *   NULL or "unix:"      a Unix socket in a new private directory (mode 0700, made with
 *                        mkdtemp() under $TMPDIR or /tmp) that tdm_listener_close() removes;
 *                        the socket's mode is opt->mode (0600);
 *   "unix:/path"         a Unix socket at /path, made with opt->mode (0600) and removed by
 *                        tdm_listener_close() if it is still the same file; -EADDRINUSE when
 *                        the path exists;
 *   "tcp:PORT"           TCP on the IPv4 loopback address 127.0.0.1;
 *   "tcp:HOST:PORT"      TCP on HOST, an IPv4 address or a name ("tcp:0.0.0.0:5000");
 *   "tcp:[V6]:PORT"      TCP on an IPv6 address ("tcp:[::1]:0"), IPv6 only.
 * Port 0 picks a free port; tdm_listener_address() tells which. Without an authkey, TCP is
 * refused (-EINVAL) unless opt->flags has TDM_CONN_INSECURE_TCP. Every accepted connection
 * gets the options' max_message. Returns 0; -EINVAL for a malformed address, bad options or TCP
 * without a key; -ENAMETOOLONG for a Unix path longer than a socket address holds; -EADDRINUSE;
 * -EADDRNOTAVAIL (IPv6 where the machine has none); -EACCES; -ENOMEM; -EMFILE; errors of
 * socket(), bind() and listen(). Thread-safe.
 */
TDM_API int tdm_listener_open(tdm_listener **out, const char *address, const tdm_conn_options *opt);

/*
 * Waits up to `timeout` for a client, and returns it in *out as a new connection owned by the
 * caller, once the handshake succeeded: with an authkey both sides have proved that they know
 * it (docs/conn.md); without one, both sides checked that neither wants one. The handshake of
 * one client takes at most the listener's handshake_timeout, and never past `timeout`.
 * Returns 0, or:
 *   -ETIMEDOUT   no client came, or the client's handshake did not finish in time;
 *   TDM_EAUTH    the client does not know the key, sent something that is not the handshake
 *                (garbage), has a key when this listener has none, or has none when it has one;
 *   -ECONNRESET  the client went away during the handshake;
 *   -EMFILE, -ENFILE, -ENOMEM; another negative errno of accept().
 * After every failure but -EMFILE/-ENFILE/-ENOMEM the client is dropped and the listener is
 * intact: call again for the next client. Several threads may accept on one listener at once.
 */
TDM_API int tdm_listener_accept(tdm_listener *l, tdm_conn **out, int64_t timeout);

/*
 * The address clients connect to, in the form tdm_listener_open() takes, with the real port
 * and path ("tcp:127.0.0.1:40123", "tcp:[::1]:40123", "unix:/tmp/tandem-Ab12Cd/socket").
 * Owned by the listener; valid until tdm_listener_close().
 */
TDM_API const char *tdm_listener_address(const tdm_listener *l);

/* The listening socket, owned by the listener (readable when a client waits to be accepted). */
TDM_API int tdm_listener_fd(const tdm_listener *l);

/*
 * Closes the listener: its socket, and the Unix socket file (and the private directory) it
 * made. Connections accepted before stay open. Returns 0; NULL is a no-op. No thread may use
 * the listener during or after the call.
 */
TDM_API int tdm_listener_close(tdm_listener *l);

/*
 * Connects to the listener at `address` (the forms of tdm_listener_open(), with a host for TCP:
 * "tcp:127.0.0.1:5000", "tcp:[::1]:5000"; "tcp:PORT" means 127.0.0.1) and makes the handshake
 * (Python's Client). The options must give the listener's authkey, or none when it has none;
 * TCP without a key needs TDM_CONN_INSECURE_TCP. Connecting and the handshake together take at
 * most opt->handshake_timeout. On success *out is a new connection owned by the caller.
 * Returns 0, or:
 *   TDM_EAUTH       the listener does not know our key, wants a key we do not have, or has none
 *                   while we have one (a client with a key never talks to a listener that has
 *                   not proved it knows it), or answered something that is not the handshake;
 *   -ETIMEDOUT      connecting or the handshake took longer than handshake_timeout;
 *   -ECONNREFUSED, -ENOENT  nobody listens there; -ECONNRESET  the listener dropped us;
 *   -EINVAL         a malformed address, bad options, or TCP without a key;
 *   -ENAMETOOLONG, -ENOMEM, -EMFILE, and errors of socket(), connect() and getaddrinfo()
 *   (-EHOSTUNREACH, -ENETUNREACH; a name that does not resolve is -EADDRNOTAVAIL).
 */
TDM_API int tdm_client_connect(tdm_conn **out, const char *address, const tdm_conn_options *opt);

#ifdef __cplusplus
}
#endif

#endif /* TANDEM_CONN_H */
