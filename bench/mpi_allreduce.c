/* The OpenMPI side of bench/allreduce_vs_mpi.sh: MPI_Allreduce (float sum) timed like
 * `distml bench allreduce` (warm-up, barrier, timed iterations, slowest rank's time), printing one
 * line per size: "bytes time_us algbw_GBps busbw_GBps wrong". Not part of libdistml.
 * usage: mpirun -n 2 mpi_allreduce WARMUP ITERS SIZE... */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int r, p;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  MPI_Comm_size(MPI_COMM_WORLD, &p);
  if (argc < 4) {
    if (r == 0) fprintf(stderr, "usage: mpi_allreduce WARMUP ITERS SIZE...\n");
    MPI_Finalize();
    return 2;
  }
  int warmup = atoi(argv[1]), iters = atoi(argv[2]);
  for (int k = 3; k < argc; k++) {
    size_t bytes = strtoull(argv[k], NULL, 10);
    size_t count = bytes / sizeof(float);
    float *buf = malloc(count * sizeof(float) + 8);
    for (size_t i = 0; i < count; i++) buf[i] = (float)(i % 16) + r;
    MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    long wrong = 0;
    for (size_t i = 0; i < count; i++)
      wrong += buf[i] != (float)(p * (int)(i % 16) + p * (p - 1) / 2);
    for (int it = 0; it < warmup; it++)
      MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int it = 0; it < iters; it++)
      MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    double t = (MPI_Wtime() - t0) / iters, tmax;
    long wsum;
    MPI_Reduce(&t, &tmax, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    MPI_Reduce(&wrong, &wsum, 1, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    if (r == 0) {
      double real = (double)(count * sizeof(float));
      double algbw = real / tmax / 1e9;
      printf("%zu %.3f %.4f %.4f %ld\n", count * sizeof(float), tmax * 1e6, algbw,
             algbw * 2.0 * (p - 1) / p, wsum);
      fflush(stdout);
    }
    free(buf);
  }
  MPI_Finalize();
  return 0;
}
