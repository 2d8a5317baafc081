/* A small sanitizer-built program for the peers benchmark (built twice:
 * gcc -fsanitize=address, and -fsanitize=thread).
 *
 *   sanitized
 *
 * Keeps some heap (64 blocks of about 1 KiB and one of 4 MiB, written), runs
 * two threads that bump a mutex-protected counter every millisecond, prints
 * "READY" and idles until stdin closes (or its parent dies). The sanitizer
 * runtime brings its own memory: ASan's 14 TiB shadow reservation, TSan's
 * shadow and meta regions, their allocators.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long counter;

static void *tick(void *arg)
{
	struct timespec ms = { 0, 1000 * 1000 };
	(void)arg;
	for (;;) {
		pthread_mutex_lock(&lock);
		counter++;
		pthread_mutex_unlock(&lock);
		nanosleep(&ms, NULL);
	}
	return NULL;
}

int main(void)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	char *keep[64];
	for (int i = 0; i < 64; i++) {
		keep[i] = malloc(1000 + i);
		memset(keep[i], i, 1000 + i);
	}
	char *big = malloc(4 << 20);
	for (size_t i = 0; i < (4 << 20); i++)
		big[i] = (char)(i * 31);
	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		if (pthread_create(&t[i], NULL, tick, NULL))
			return 1;
	printf("READY\n");
	fflush(stdout);
	char c;
	while (read(0, &c, 1) > 0)
		;
	pthread_mutex_lock(&lock);
	printf("%lu %d\n", counter, keep[5][0] + big[7]);
	pthread_mutex_unlock(&lock);
	return 0;
}
