/* Four threads stopped at known places, for tests/test_elfcore.py: each in
 * its own function with a known local, plus a known heap string. Prints
 * "READY <pid>" once every thread has reached its place; then waits. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

char *heap_string;
volatile long spin_counter;
volatile int spinning;
static int pipe_fds[2];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static pthread_barrier_t barrier;

__attribute__((noinline)) void *sleeper_thread(void *arg)
{
	volatile int sleeper_local = 1001;
	pthread_barrier_wait(&barrier);
	for (;;) {
		struct timespec ts = {1000, 0};
		nanosleep(&ts, NULL);
	}
	return (void *)(long)sleeper_local;
}

__attribute__((noinline)) void *reader_thread(void *arg)
{
	volatile int reader_local = 2002;
	char buf[16];
	pthread_barrier_wait(&barrier);
	for (;;)
		if (read(pipe_fds[0], buf, sizeof(buf)) <= 0)
			break;
	return (void *)(long)reader_local;
}

__attribute__((noinline)) void *waiter_thread(void *arg)
{
	volatile int waiter_local = 3003;
	pthread_mutex_lock(&lock);
	pthread_barrier_wait(&barrier);
	for (;;)
		pthread_cond_wait(&cond, &lock);
	return (void *)(long)waiter_local;
}

__attribute__((noinline)) void *spinner_thread(void *arg)
{
	volatile int spinner_local = 4004;
	pthread_barrier_wait(&barrier);
	spinning = 1;
	for (;;)
		spin_counter += spinner_local;
	return NULL;
}

int main(void)
{
	pthread_t t[4];
	volatile int main_local = 5005;
	void *(*fn[4])(void *) = {sleeper_thread, reader_thread, waiter_thread, spinner_thread};

	heap_string = strdup("the known heap string of elfcore threads");
	if (pipe(pipe_fds))
		return 1;
	pthread_barrier_init(&barrier, NULL, 5);
	for (int i = 0; i < 4; i++)
		pthread_create(&t[i], NULL, fn[i], NULL);
	pthread_barrier_wait(&barrier);
	while (!spinning)
		;
	printf("READY %d\n", getpid());
	fflush(stdout);
	for (;;)
		pause();
	return main_local;
}
