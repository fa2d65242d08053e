/* Atomic file writes: temp file in the same directory, fsync, rename, fsync of the directory.
 * A crash or a failed write leaves either the old file or the new one, never half of one. */
#include "core/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int dml_atomic_open(dml_atomic_file *af, const char *path, dml_err *err) {
  memset(af, 0, sizeof(*af));
  if (path[0] == 0) return dml_err_set(err, DML_EINVAL, "an empty file name");
  /* the rename would replace whatever is there: a device, a pipe or a directory is not ours */
  struct stat st;
  if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
    return dml_err_set(err, DML_EINVAL, "%s: exists and is not a regular file (not replaced)",
                       path);
  size_t n = strlen(path) + 32;
  af->path = dml__strdup(path);
  af->tmp_path = dml__malloc(n);
  if (af->path == NULL || af->tmp_path == NULL) {
    dml_atomic_abort(af);
    return dml_err_set(err, DML_ENOMEM, "%s: out of memory", path);
  }
  snprintf(af->tmp_path, n, "%s.tmp.%ld", path, (long)getpid());
  int fd = open(af->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    int e = errno;
    dml__free(af->tmp_path); /* nothing was created: do not unlink */
    af->tmp_path = NULL;
    dml_atomic_abort(af);
    return dml_err_set(err, DML_EIO, "%s: cannot create: %s", path, strerror(e));
  }
  af->f = fdopen(fd, "wb");
  if (af->f == NULL) {
    close(fd);
    dml_atomic_abort(af);
    return dml_err_set(err, DML_EIO, "%s: cannot open: %s", path, strerror(errno));
  }
  return 0;
}

static void fsync_dir(const char *path) {
  char *copy = dml__strdup(path);
  if (copy == NULL) return;
  int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
  dml__free(copy);
}

int dml_atomic_commit(dml_atomic_file *af, dml_err *err) {
  int rc = 0;
  if (af->f == NULL) return dml_err_set(err, DML_ESTATE, "atomic file is not open");
  if (ferror(af->f) || fflush(af->f) != 0 || fsync(fileno(af->f)) != 0) {
    rc = dml_err_set(err, DML_EIO, "%s: write failed: %s", af->path, strerror(errno));
  }
  if (fclose(af->f) != 0 && rc == 0)
    rc = dml_err_set(err, DML_EIO, "%s: write failed: %s", af->path, strerror(errno));
  af->f = NULL;
  if (rc == 0 && rename(af->tmp_path, af->path) != 0)
    rc = dml_err_set(err, DML_EIO, "%s: rename failed: %s", af->path, strerror(errno));
  if (rc == 0) {
    fsync_dir(af->path);
    dml__free(af->tmp_path);
    af->tmp_path = NULL;
  }
  dml_atomic_abort(af);
  return rc;
}

void dml_atomic_abort(dml_atomic_file *af) {
  if (af->f != NULL) fclose(af->f);
  if (af->tmp_path != NULL) unlink(af->tmp_path);
  dml__free(af->tmp_path);
  dml__free(af->path);
  memset(af, 0, sizeof(*af));
}
