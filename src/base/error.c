/*
 * error.c: messages and names for error codes. tandem's own codes come from the one table in
 * tandem/error.h; errno values are described by the C library (strerrordesc_np and
 * strerrorname_np, which return static strings and so are thread-safe, unlike strerror).
 */
#include <string.h>

#include "base/internal.h"

const char *tdm_strerror(int err) {
  switch (err) {
#define MESSAGE(name, value, message) \
  case value:                         \
    return message;
    TDM_ERROR_MAP(MESSAGE)
#undef MESSAGE
  default:
    break;
  }
  if (err == 0) return "success";
  int e = err < 0 ? -err : err;
#ifdef HAVE_STRERRORDESC_NP
  const char *s = strerrordesc_np(e);
  return s != NULL ? s : "unknown error";
#else
  /* Older C libraries: the GNU strerror_r, into a per-thread buffer (valid until the next call
   * in the same thread). */
  static __thread char buf[128];
  const char *s = strerror_r(e, buf, sizeof buf);
  return strncmp(s, "Unknown error", 13) == 0 ? "unknown error" : s;
#endif
}

const char *tdm_err_name(int err) {
  switch (err) {
#define NAME(name, value, message) \
  case value:                      \
    return "TDM_" #name;
    TDM_ERROR_MAP(NAME)
#undef NAME
  default:
    break;
  }
  if (err == 0) return "OK";
  int e = err < 0 ? -err : err;
#ifdef HAVE_STRERRORNAME_NP
  const char *s = strerrorname_np(e);
  if (s != NULL) return s;
#endif
  return "UNKNOWN";
}
