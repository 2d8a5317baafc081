/* The dense target of the peers benchmark, optionally writing.
 *
 *   dense_writer MIB [RATE]
 *
 * Maps MIB MiB private anonymous memory and fills it: the first half with
 * pseudo-random bytes, the second with English text (so it compresses
 * about 2:1), then prints "READY ADDR SIZE".
 *
 * Without RATE it idles. With RATE it rewrites 16 bytes at the start of
 * random pages for ever: RATE pages per second (paced every 10 ms), or
 * "max" for as fast as it can. Each line it reads on stdin is answered
 * with "WRITTEN PAGES NS" (pages rewritten so far, CLOCK_MONOTONIC), so the
 * rate achieved can be measured; it exits when stdin closes (or its parent
 * dies).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

static volatile uint64_t written;

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static void *answer(void *arg)
{
	char line[64];
	(void)arg;
	while (fgets(line, sizeof(line), stdin)) {
		printf("WRITTEN %llu %llu\n", (unsigned long long)written, (unsigned long long)now_ns());
		fflush(stdout);
	}
	_exit(0);
}

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: %s MIB [PAGES_PER_S|max]\n", argv[0]);
		return 2;
	}
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	size_t size = strtoull(argv[1], NULL, 10) << 20;
	size_t pages = size / PAGE;
	unsigned char *buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	uint64_t seed = 0x9e3779b97f4a7c15ULL;
	size_t half = size / 2;
	for (size_t off = 0; off < half; off += 8) {
		uint64_t v = xorshift(&seed);
		memcpy(buf + off, &v, 8);
	}
	static const char text[] = "The quick brown fox jumps over the lazy dog. ";
	for (size_t off = half; off < size; off++)
		buf[off] = text[(off - half) % (sizeof(text) - 1)];
	printf("READY %lu %zu\n", (unsigned long)(uintptr_t)buf, size);
	fflush(stdout);

	pthread_t t;
	if (pthread_create(&t, NULL, answer, NULL))
		return 1;
	if (argc == 2) {
		pthread_join(t, NULL);
		return 0;
	}
	int max = strcmp(argv[2], "max") == 0;
	double rate = max ? 0 : strtod(argv[2], NULL);
	double owed = 0;
	struct timespec next;
	clock_gettime(CLOCK_MONOTONIC, &next);
	for (;;) {
		size_t n = 4096;
		if (!max) {
			owed += rate / 100;
			n = (size_t)owed;
			owed -= n;
		}
		for (size_t i = 0; i < n; i++) {
			uint64_t r = xorshift(&seed);
			uint64_t *p = (uint64_t *)(buf + (r % pages) * PAGE);
			p[0] = r;
			p[1] = written;
		}
		written += n;
		if (!max) {
			next.tv_nsec += 10 * 1000 * 1000;
			if (next.tv_nsec >= 1000000000L) {
				next.tv_nsec -= 1000000000L;
				next.tv_sec++;
			}
			clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
		}
	}
}
