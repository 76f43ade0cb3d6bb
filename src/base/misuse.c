/*
 * misuse.c: the one place where tandem stops a program. A call used against its contract
 * (releasing a lock the caller does not hold, using an object that was never initialised) is a
 * bug in the caller; carrying on would corrupt memory that other threads or processes share, so
 * tandem says what happened and aborts, leaving a core dump at the faulty call.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/internal.h"

_Noreturn void tdm__misuse(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("tandem: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  fflush(stderr);
  va_end(ap);
  abort();
}
