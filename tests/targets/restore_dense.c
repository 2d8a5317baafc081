/* Restore benchmark target: MIB MiB of private anonymous memory, half
 * pseudo-random (incompressible), half repeated text.
 *
 *   restore_dense READY_FD LOG MIB
 *
 * Fills the memory, writes "READY\n" on READY_FD (then closes it), and
 * appends "alive N" to LOG every 100 ms, so a restore can be seen to run.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s READY_FD LOG MIB\n", argv[0]);
		return 2;
	}
	int ready = atoi(argv[1]);
	int log = open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	size_t size = (size_t)atol(argv[3]) << 20;
	if (log < 0 || size == 0)
		return 1;
	unsigned char *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return 1;
	uint64_t x = 88172645463325252ULL;
	uint64_t *w = (uint64_t *)m;
	for (size_t i = 0; i < size / 2 / 8; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		w[i] = x;
	}
	static const char text[] = "The quick brown fox jumps over the lazy dog. ";
	for (size_t off = size / 2; off < size; off++)
		m[off] = text[off % (sizeof(text) - 1)];
	if (write(ready, "READY\n", 6) != 6)
		return 1;
	close(ready);
	unsigned long n = 0;
	struct timespec tick = { 0, 100 * 1000 * 1000 };
	char buf[64];
	for (;;) {
		n++;
		int k = snprintf(buf, sizeof(buf), "alive %lu %u\n", n, m[(n * 4096) % size]);
		if (write(log, buf, k) != k)
			return 1;
		nanosleep(&tick, NULL);
	}
}
