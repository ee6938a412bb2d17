/*
 * exectime: how long one exec takes inside a container, sample by sample.
 *
 *     exectime COUNT OUTPUT PROGRAM [ARG...]
 *
 * Spawns PROGRAM COUNT times, one after the other, and writes to OUTPUT the
 * nanoseconds from posix_spawn() to the child's exit, one line per run. A
 * PROGRAM holding "%ld" is a new path each time, the run's number put there. The
 * benchmark copies this program, linked statically, into a busybox rootfs:
 * a shell loop can only give a mean, and the measurement agent's aims are a
 * median and a 99th percentile.
 */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>

extern char **environ;

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: exectime COUNT OUTPUT PROGRAM [ARG...]\n");
        return 2;
    }
    long count = strtol(argv[1], NULL, 10);
    long long *samples = calloc(count > 0 ? count : 1, sizeof *samples);
    if (samples == NULL) {
        perror("exectime: calloc");
        return 1;
    }

    char path[4096];
    for (long i = 0; i < count; i++) {
        pid_t pid;
        int status;
        snprintf(path, sizeof path, argv[3], i);
        long long start = now_ns();
        if (posix_spawn(&pid, path, NULL, NULL, &argv[3], environ) != 0) {
            perror("exectime: posix_spawn");
            return 1;
        }
        if (waitpid(pid, &status, 0) < 0) {
            perror("exectime: waitpid");
            return 1;
        }
        samples[i] = now_ns() - start;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "exectime: %s failed (status 0x%x)\n", path, status);
            return 1;
        }
    }

    /* Written at the end, so that the file's own opens are not timed. */
    FILE *out = fopen(argv[2], "w");
    if (out == NULL) {
        perror("exectime: fopen");
        return 1;
    }
    for (long i = 0; i < count; i++)
        fprintf(out, "%lld\n", samples[i]);
    return fclose(out) == 0 ? 0 : 1;
}
