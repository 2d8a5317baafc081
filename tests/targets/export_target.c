/* Export test target: two threads, a counter in a log, a pipe holding
 * unread bytes, a file deleted while open.
 *
 *   export_target READY_FD LOG
 *
 * Every line goes to LOG (O_APPEND, one write per line). At start the
 * holder thread logs "fds CTL_W DATA_R GHOST" and "tid holder TID".
 *   main    logs "count N" (N = 1, 2, ...) every 10 ms;
 *   holder  logs "tick N" every ~20 ms (poll() on the control pipe with a
 *           timeout); owns the data pipe, holding "unread bytes in the pipe"
 *           that nobody reads until "go" arrives on the control pipe, when
 *           it logs "drained TEXT".
 * GHOST is a descriptor of LOG.ghost, written with "contents of a deleted
 * file" and unlinked: CRIU keeps it as a ghost file.
 * READY is written once the holder has logged its first lines.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PIPE_TEXT "unread bytes in the pipe"
#define GHOST_TEXT "contents of a deleted file"

static int logfd;
static int ctl[2], data[2];
static int ghost;
static atomic_int started;

static void say(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (write(logfd, buf, n) != n)
		_exit(1);
}

static void *holder(void *arg)
{
	(void)arg;
	say("fds %d %d %d\n", ctl[1], data[0], ghost);
	say("tid holder %ld\n", (long)syscall(SYS_gettid));
	atomic_store(&started, 1);
	unsigned long n = 0;
	for (;;) {
		struct pollfd p = { .fd = ctl[0], .events = POLLIN };
		int r = poll(&p, 1, 20);
		if (r == 0) {
			say("tick %lu\n", ++n);
			continue;
		}
		if (r < 0)
			continue;
		char buf[64] = { 0 };
		if (read(ctl[0], buf, sizeof(buf) - 1) > 0 && strstr(buf, "go")) {
			char got[64] = { 0 };
			if (read(data[0], got, sizeof(got) - 1) > 0)
				say("drained %s\n", got);
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s READY_FD LOG\n", argv[0]);
		return 2;
	}
	int ready = atoi(argv[1]);
	logfd = open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (logfd < 0 || pipe(ctl) || pipe(data))
		return 1;
	if (write(data[1], PIPE_TEXT, strlen(PIPE_TEXT)) != (ssize_t)strlen(PIPE_TEXT))
		return 1;
	char name[4096];
	snprintf(name, sizeof(name), "%s.ghost", argv[2]);
	ghost = open(name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (ghost < 0 || write(ghost, GHOST_TEXT, strlen(GHOST_TEXT)) != (ssize_t)strlen(GHOST_TEXT) || unlink(name))
		return 1;
	pthread_t th;
	if (pthread_create(&th, NULL, holder, NULL))
		return 1;
	while (!atomic_load(&started))
		usleep(1000);
	if (write(ready, "READY\n", 6) != 6)
		return 1;
	close(ready);

	unsigned long n = 0;
	struct timespec tick = { 0, 10 * 1000 * 1000 };
	for (;;) {
		say("count %lu\n", ++n);
		nanosleep(&tick, NULL);
	}
}
