"""Trivial-task throughput of Dask distributed, the peer of `distml bench task --only farm`:
LocalCluster with 2 worker processes of 1 thread each, client.map(inc, range(N)) then gather,
best of REPS runs. Prints one JSON object like distml's. Not part of distml (run by
bench/task_farm_vs_dask.sh)."""
import json
import sys
import time


def inc(x):
    return x + 1


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        best = float("inf")
        for r in range(reps):
            t0 = time.perf_counter()
            # pure=False: every run really computes (no result cache across runs)
            futures = client.map(inc, range(n), pure=False)
            res = client.gather(futures)
            t = time.perf_counter() - t0
            if res != [x + 1 for x in range(n)]:
                raise SystemExit("dask: wrong results")
            del futures
            best = min(best, t)
    print(json.dumps({"bench": "farm", "runtime": "dask", "threads": 2, "tasks": n, "best_s": best,
                      "tasks_per_s": n / best, "ns_per_task": best * 1e9 / n}))


if __name__ == "__main__":
    main()
