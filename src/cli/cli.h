/* Shared helpers of the distml command: flag parsing with clear errors, and the subcommand entry
 * points. Only the CLI may exit; the library reports errors through return codes and dml_err. */
#ifndef DISTML_CLI_H
#define DISTML_CLI_H

#include <stdint.h>

/* Prints "distml CMD: message" to stderr and exits with status 2 (usage) or 1 (failure). */
void dml_cli_usage_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));
void dml_cli_fail(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

/* Value parsers for flags: exit with a usage error naming the flag on bad input. */
int64_t dml_cli_int(const char *cmd, const char *flag, const char *value, int64_t min, int64_t max);
double dml_cli_double(const char *cmd, const char *flag, const char *value, double min, double max);

/* A comma-separated list given to flag: exits with a usage error naming it when an item is empty
 * ("256,,128", "0,", ","). */
void dml_cli_check_list(const char *cmd, const char *flag, const char *value);
/* An output file given by a flag: exits with a usage error naming the flag when its directory is
 * missing or not writable, or the path exists and is not a regular file -- before any work. */
void dml_cli_check_output(const char *cmd, const char *flag, const char *path);

/* OpenBLAS: choose fast kernels on CPUs that Debian's OpenBLAS 0.3.21 does not know (see
 * docs/blas.md). Called first thing in main; may re-exec the program with OPENBLAS_CORETYPE set. */
void dml_cli_select_blas(char **argv);
/* One line describing the BLAS in use ("OpenBLAS 0.3.21 ... SkylakeX"). */
const char *dml_cli_blas_info(void);
void dml_cli_set_blas_threads(int threads);

/* A rank started by the local launcher (LOCAL_RANK, LOCAL_WORLD_SIZE) takes core LOCAL_RANK when
 * there are enough cores; call before any thread starts. DISTML_NO_PIN=1: never. */
void dml_cli_pin_local_rank(void);

int dml_cli_train_main(int argc, char **argv);
int dml_cli_eval_main(int argc, char **argv);
int dml_cli_gen_main(int argc, char **argv);
int dml_cli_tune_main(int argc, char **argv);

#endif
