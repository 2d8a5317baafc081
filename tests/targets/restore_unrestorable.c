/* Restore test target holding one resource dumper does not save.
 *
 *   restore_unrestorable READY_FD LOG KIND
 *
 * KIND: "tcp" (a listening TCP socket on 127.0.0.1 and a connected pair),
 * "inotify" (an inotify descriptor watching /tmp), "child" (a child process
 * that sleeps). Logs "count N" every ~10 ms like restore_counter; a dump
 * must complete, mark the checkpoint not restorable, and `dumper restore`
 * must refuse it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s READY_FD LOG tcp|inotify|child\n", argv[0]);
		return 2;
	}
	int ready = atoi(argv[1]);
	int log = open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (log < 0)
		return 1;
	const char *kind = argv[3];
	char buf[64];
	if (!strcmp(kind, "tcp")) {
		int s = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		socklen_t len = sizeof(a);
		if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 1) ||
		    getsockname(s, (struct sockaddr *)&a, &len))
			return 1;
		int c = socket(AF_INET, SOCK_STREAM, 0);
		if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof(a)))
			return 1;
		int k = snprintf(buf, sizeof(buf), "tcp fd %d %d port %d\n", s, c, ntohs(a.sin_port));
		write(log, buf, k);
	} else if (!strcmp(kind, "inotify")) {
		int fd = inotify_init1(IN_CLOEXEC);
		if (fd < 0 || inotify_add_watch(fd, "/tmp", IN_CREATE) < 0)
			return 1;
		int k = snprintf(buf, sizeof(buf), "inotify fd %d\n", fd);
		write(log, buf, k);
	} else if (!strcmp(kind, "child")) {
		pid_t c = fork();
		if (c < 0)
			return 1;
		if (c == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			for (;;)
				pause();
		}
		int k = snprintf(buf, sizeof(buf), "child %d\n", c);
		write(log, buf, k);
	} else {
		return 2;
	}
	if (write(ready, "READY\n", 6) != 6)
		return 1;
	close(ready);
	unsigned long n = 0;
	struct timespec tick = { 0, 10 * 1000 * 1000 };
	for (;;) {
		int k = snprintf(buf, sizeof(buf), "count %lu\n", ++n);
		if (write(log, buf, k) != k)
			return 1;
		nanosleep(&tick, NULL);
	}
}
