/* Status codes and the error buffer (dml_err). The table itself lives in distml/core.h. */
#include "core/internal.h"

#include <stdio.h>
#include <string.h>

const char *dml_strerror(int code) {
  if (code == 0) return "success";
  switch (code) {
#define DML__XX(name, value, msg) \
  case value: return msg;
    DML_ERRNO_MAP(DML__XX)
#undef DML__XX
  }
  return "unknown error";
}

const char *dml_err_name(int code) {
  if (code == 0) return "OK";
  switch (code) {
#define DML__XX(name, value, msg) \
  case value: return #name;
    DML_ERRNO_MAP(DML__XX)
#undef DML__XX
  }
  return "EUNKNOWN";
}

int dml_err_set(dml_err *err, int code, const char *fmt, ...) {
  if (err == NULL) return code;
  err->code = code;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
  va_end(ap);
  return code;
}

void dml_err_clear(dml_err *err) {
  if (err == NULL) return;
  err->code = 0;
  err->msg[0] = '\0';
}

const char *dml_err_msg(const dml_err *err) {
  if (err == NULL) return "";
  if (err->msg[0] != '\0') return err->msg;
  return dml_strerror(err->code);
}

const char *dml_version(void) {
  return DISTML_VERSION;
}
