/* Restore test target: one thread appending an incrementing counter to a log.
 *
 *   restore_counter READY_FD LOG
 *
 * Opens LOG with O_APPEND, writes "READY\n" on READY_FD and closes it, then
 * appends "count N\n" (N = 1, 2, ...) once per ~10 ms, forever. The counter
 * lives only in memory, so after a dump (--kill) and a restore the log must
 * go on from the last value written before the dump: that proves the memory
 * and the file position/flags came back.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s READY_FD LOG\n", argv[0]);
		return 2;
	}
	int ready = atoi(argv[1]);
	int log = open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (log < 0) {
		perror(argv[2]);
		return 1;
	}
	if (write(ready, "READY\n", 6) != 6)
		return 1;
	close(ready);

	unsigned long n = 0;
	struct timespec tick = { 0, 10 * 1000 * 1000 };
	char buf[64];
	for (;;) {
		int k = snprintf(buf, sizeof(buf), "count %lu\n", ++n);
		if (write(log, buf, k) != k)
			return 1;
		nanosleep(&tick, NULL);
	}
}
