/* The parameter-server strategy's CLI glue: --servers and --sync parsing and the launcher hooks
 * that give each child its role and decide what a failed rank means. It does not parse the other train flags or run training. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/ps_launch.h"

#include "cli/launch.h"

int dml_cli_ps_config(const char *servers, const char *sync, int world, dml_ps_config *cfg,
                      dml_err *err) {
  dml_ps_config_init(cfg);
  if (servers != NULL && strcmp(servers, "colocated") == 0) {
    cfg->colocated = 1;
  } else if (servers != NULL) {
    int64_t s;
    if (dml_parse_i64(servers, 1, 1 << 20, &s, err) != 0)
      return dml_err_set(err, DML_EINVAL,
                         "--servers %s: want a count of server processes or 'colocated'", servers);
    cfg->num_servers = (int)s;
  }
  if (!cfg->colocated && cfg->num_servers >= world)
    return dml_err_set(err, DML_EINVAL,
                       "--servers %d with %d processes leaves no worker (use -n %d or more)",
                       cfg->num_servers, world, cfg->num_servers + 1);
  return dml_ps_sync_parse(sync ? sync : "bsp", &cfg->staleness, err);
}

int dml_cli_ps_child_setup(int rank, int world_size, void *user) {
  const dml_ps_config *cfg = user;
  const char *role = cfg->colocated            ? "worker+server"
                     : rank < cfg->num_servers ? "server"
                                               : "worker";
  if (setenv("DISTML_ROLE", role, 1) != 0) return 1;
  char line[128];
  int len = snprintf(line, sizeof line, "distml ps: rank %d of %d role %s pid %ld\n", rank,
                     world_size, role, (long)getpid());
  if (len > 0 && write(2, line, (size_t)len) < 0) return 0; /* the announcement is best effort */
  return 0;
}

int dml_cli_ps_failure_policy(int rank, int world_size, void *user) {
  const dml_ps_config *cfg = user;
  (void)world_size;
  if (cfg->colocated) return DML_LAUNCH_STOP_ALL;
  if (rank < cfg->num_servers)
    return cfg->checkpoint_dir != NULL ? DML_LAUNCH_RESTART : DML_LAUNCH_STOP_ALL;
  return rank == cfg->num_servers ? DML_LAUNCH_STOP_ALL : DML_LAUNCH_CONTINUE;
}
