/* BLAS kernel selection. Debian 12's OpenBLAS 0.3.21 (DYNAMIC_ARCH) does not recognise recent
 * AVX-512 CPUs and falls back to its Prescott kernels, 4x slower on our sgemm. OpenBLAS reads
 * OPENBLAS_CORETYPE only when it is loaded, so when it picked a fallback core on a CPU with
 * AVX-512 we re-exec ourselves once with OPENBLAS_CORETYPE=SkylakeX (a type the user set is kept).
 * The measurements behind this choice are in docs/blas.md. */
#include "cli/cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "distml/core.h"

/* OpenBLAS's own introspection (declared in its cblas.h/openblas_config.h on newer versions). */
char *openblas_get_corename(void);
char *openblas_get_config(void);
void openblas_set_num_threads(int n);

static int cpu_has_avx512(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}

/* Cores OpenBLAS falls back to when it does not know the CPU. */
static int is_fallback_core(const char *core) {
  static const char *fallback[] = {"Prescott", "Core2", "Nehalem", "Sandybridge", "Haswell", "Zen"};
  for (size_t i = 0; i < sizeof(fallback) / sizeof(fallback[0]); i++)
    if (strcmp(core, fallback[i]) == 0) return 1;
  return 0;
}

void dml_cli_select_blas(char **argv) {
  if (getenv("OPENBLAS_CORETYPE") != NULL || getenv("DISTML_NO_BLAS_SELECT") != NULL) return;
  const char *core = openblas_get_corename();
  if (core == NULL || !is_fallback_core(core) || !cpu_has_avx512()) return;
  setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
  setenv("DISTML_NO_BLAS_SELECT", "1", 1); /* never loop, even if the re-exec fails oddly */
  execv("/proc/self/exe", argv);
  /* exec failed: carry on with the slow kernels, and say so. */
  dml_log(DML_LOG_WARN, "could not re-exec with OPENBLAS_CORETYPE=SkylakeX; BLAS stays on %s",
          core);
}

const char *dml_cli_blas_info(void) {
  static char info[256];
  snprintf(info, sizeof(info), "%s (core %s)", openblas_get_config(), openblas_get_corename());
  return info;
}

void dml_cli_set_blas_threads(int threads) {
  openblas_set_num_threads(threads);
}
