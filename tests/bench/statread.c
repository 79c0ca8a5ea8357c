/* statread: the cached-path workload of tests/bench/cached.sh. One thread, for a fixed
 * time, cycles over the given files doing stat, open, read until EOF, close; one such
 * sequence is one op. Prints ops/s and the mean time of each step in microseconds.
 *
 * Built by cached.sh at bench time: cc -O2 -o statread statread.c */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: statread SECONDS FILE...\n");
		return 2;
	}
	double duration = atof(argv[1]);
	char **files = argv + 2;
	int n_files = argc - 2;
	char buf[4096];
	double t_stat = 0, t_open = 0, t_read = 0, t_close = 0;
	unsigned long ops = 0, reads = 0;

	double start = now_s(), end = start + duration, t0, t1;
	for (t0 = start; t0 < end; ops++) {
		const char *path = files[ops % (unsigned long) n_files];
		struct stat st;
		if (stat(path, &st) < 0) {
			fprintf(stderr, "statread: stat %s: %s\n", path, strerror(errno));
			return 1;
		}
		t1 = now_s();
		t_stat += t1 - t0;
		int fd = open(path, O_RDONLY);
		if (fd < 0) {
			fprintf(stderr, "statread: open %s: %s\n", path, strerror(errno));
			return 1;
		}
		t0 = now_s();
		t_open += t0 - t1;
		ssize_t r;
		while ((r = read(fd, buf, sizeof(buf))) > 0)
			reads++;
		reads++;
		if (r < 0) {
			fprintf(stderr, "statread: read %s: %s\n", path, strerror(errno));
			return 1;
		}
		t1 = now_s();
		t_read += t1 - t0;
		close(fd);
		t0 = now_s();
		t_close += t0 - t1;
	}
	double elapsed = t0 - start;
	printf("ops_per_s %.0f ops %lu stat_us %.2f open_us %.2f read_us %.2f close_us %.2f "
	       "reads_per_op %.2f\n",
	       (double) ops / elapsed, ops, 1e6 * t_stat / (double) ops,
	       1e6 * t_open / (double) ops, 1e6 * t_read / (double) ops,
	       1e6 * t_close / (double) ops, (double) reads / (double) ops);
	return 0;
}
