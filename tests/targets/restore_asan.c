/* Restore test target, built with -fsanitize=address: a counter like
 * restore_counter, plus a deliberate heap overflow on demand.
 *
 *   restore_asan READY_FD LOG
 *
 * Logs "count N" every ~10 ms. On SIGUSR1 it reads one byte past a 16-byte
 * heap block: ASan must report "heap-buffer-overflow" (on stderr) and end
 * the process, also after a dump and a restore, which proves the shadow
 * memory (a 14 TiB reservation) and ASan's own state came back.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t overflow;

static void on_usr1(int sig)
{
	(void)sig;
	overflow = 1;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s READY_FD LOG\n", argv[0]);
		return 2;
	}
	int ready = atoi(argv[1]);
	int log = open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (log < 0)
		return 1;
	signal(SIGUSR1, on_usr1);
	/* Some heap to keep: ASan's allocator state must survive too. */
	char *keep[64];
	for (int i = 0; i < 64; i++) {
		keep[i] = malloc(1000 + i);
		memset(keep[i], i, 1000 + i);
	}
	if (write(ready, "READY\n", 6) != 6)
		return 1;
	close(ready);

	unsigned long n = 0;
	struct timespec tick = { 0, 10 * 1000 * 1000 };
	char buf[64];
	volatile int past = 16;
	for (;;) {
		if (overflow) {
			char *p = malloc(16);
			int k = snprintf(buf, sizeof(buf), "overflow at count %lu\n", n);
			write(log, buf, k);
			volatile char c = p[past]; /* heap-buffer-overflow */
			(void)c;
			free(p);
			overflow = 0;
		}
		int k = snprintf(buf, sizeof(buf), "count %lu\n", ++n);
		if (write(log, buf, k) != k)
			return 1;
		if (keep[n % 64][0] != (char)(n % 64))
			return 4;
		nanosleep(&tick, NULL);
	}
}
