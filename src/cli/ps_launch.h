/* CLI helpers for `distml train --strategy ps`: parsing --servers and --sync into a dml_ps_config,
 * and the launcher's per-rank hooks: DISTML_ROLE and the announcement of each process, and what
 * happens when one fails. The training
 * itself is dml_train_ps_run (src/train/train_ps.h). */
#ifndef DISTML_CLI_PS_LAUNCH_H
#define DISTML_CLI_PS_LAUNCH_H

#include "distml/ps.h"

/* servers: "S" (1..world-1) or "colocated" (NULL: 1); sync: "bsp" | "ssp:S" | "asp" (NULL: bsp).
 * world: the number of processes. Errors name the flag. */
int dml_cli_ps_config(const char *servers, const char *sync, int world, dml_ps_config *cfg,
                      dml_err *err);

/* dml_launch_opts.child_setup with user = the dml_ps_config: sets DISTML_ROLE=server|worker
 * (colocated: "worker+server") and writes "distml ps: rank R role ROLE pid P" on stderr. */
int dml_cli_ps_child_setup(int rank, int world_size, void *user);

/* dml_launch_opts.failure_policy with the same user: a dedicated server is restarted when
 * cfg->checkpoint_dir is set (it reloads its shard) and stops the job otherwise; a worker other
 * than the first (which evaluates and reports the result) is left behind and the others go on
 * (servers stop counting its clock: BSP stops waiting for it); colocated ranks hold a shard each,
 * so their failure stops the job. */
int dml_cli_ps_failure_policy(int rank, int world_size, void *user);

#endif
