/*
 * A target holding one descriptor of every kind tests/test_files.py checks.
 *
 *   fds_target DIR READY_FD [--bad] [--fork]
 *
 * Sets everything up inside DIR (which becomes its cwd; umask 027), writes
 * one line "name=fd name=fd ...\n" to READY_FD, closes it, and waits for
 * signals. On SIGUSR1 it checks what it holds (reads the bytes left in the
 * pipe and the FIFO, the eventfd counter, file positions, appends a line to
 * the log) and writes DIR/report-PID (via report-PID.tmp and rename), one
 * "key value" per line. SIGTERM exits.
 *
 * --bad adds descriptors nobody restores: a listening TCP socket, an
 * inotify instance and a signalfd. --fork forks a child after the set-up
 * (SIGCHLD ignored, so it is reaped by the kernel); it shares every
 * descriptor and answers SIGUSR1 the same way.
 *
 * Contents are patterns the test recomputes: byte i of "data" is
 * (i * 7 + 3) & 0xff, of "ghost" (i * 13 + 5) & 0xff, of the pipe
 * 'a' + i % 26, of the FIFO 'A' + i % 26.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define DATA_SIZE 20000
#define DATA_POS 12345
#define GHOST_SIZE 5000
#define GHOST_POS 100
#define SPARSE_OFF 40960
#define PIPE_BYTES 3000
#define PIPE_SIZE (128 * 1024)
#define FIFO_BYTES 1500
#define EFD_COUNTER 42

static char line[4096];
static size_t line_len;

static void die(const char *what)
{
	fprintf(stderr, "fds_target: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void note(const char *name, int fd)
{
	line_len += snprintf(line + line_len, sizeof(line) - line_len, "%s%s=%d", line_len ? " " : "", name, fd);
}

static void fill(char *buf, size_t n, int mul, int add)
{
	for (size_t i = 0; i < n; i++)
		buf[i] = (char)((i * mul + add) & 0xff);
}

static void write_all(int fd, const char *buf, size_t n)
{
	while (n) {
		ssize_t w = write(fd, buf, n);
		if (w < 0)
			die("write");
		buf += w;
		n -= w;
	}
}

static int fds[32];
enum { LOG, LOG_DUP, DATA, GHOST, SPARSE, DEVNULL, URANDOM, DIRFD, PIPE_R, PIPE_W, FIFO_R, FIFO_W, EFD, OPATH, NFDS };
static const char *names[NFDS] = { "log",     "log_dup", "data",   "ghost",  "sparse", "devnull", "urandom",
				   "dir",     "pipe_r",  "pipe_w", "fifo_r", "fifo_w", "efd",     "opath" };

static int check_pattern(const char *buf, size_t n, char base)
{
	for (size_t i = 0; i < n; i++)
		if (buf[i] != (char)(base + i % 26))
			return 0;
	return 1;
}

static void report(void)
{
	char path[64], tmp[80], buf[65536];
	FILE *f;
	ssize_t n;
	uint64_t counter = 0;

	snprintf(path, sizeof(path), "report-%d", getpid());
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "w");
	if (!f)
		die("fopen report");

	for (int i = 0; i < NFDS; i++) {
		fprintf(f, "fl_%s %d\n", names[i], fcntl(fds[i], F_GETFL));
		fprintf(f, "fd_%s %d\n", names[i], fcntl(fds[i], F_GETFD));
	}
	fprintf(f, "pos_data %ld\n", (long)lseek(fds[DATA], 0, SEEK_CUR));
	fprintf(f, "pos_ghost %ld\n", (long)lseek(fds[GHOST], 0, SEEK_CUR));
	fprintf(f, "pos_sparse %ld\n", (long)lseek(fds[SPARSE], 0, SEEK_CUR));

	n = pread(fds[GHOST], buf, sizeof(buf), 0);
	{
		char want[GHOST_SIZE];
		fill(want, GHOST_SIZE, 13, 5);
		fprintf(f, "ghost_ok %d\n", n == GHOST_SIZE && !memcmp(buf, want, GHOST_SIZE));
	}
	{
		struct stat st;
		char want[8192];
		fstat(fds[SPARSE], &st);
		fill(want, sizeof(want), 13, 5);
		n = pread(fds[SPARSE], buf, 8192, 0);
		int ok = n == 8192 && !memcmp(buf, want, 8192);
		n = pread(fds[SPARSE], buf, 4096, SPARSE_OFF);
		ok = ok && n == 4096 && !memcmp(buf, want, 4096);
		n = pread(fds[SPARSE], buf, 4096, 16384);
		for (int i = 0; ok && i < n; i++)
			ok = buf[i] == 0;
		fprintf(f, "sparse_ok %d\nsparse_size %ld\nsparse_nlink %ld\n", ok, (long)st.st_size, (long)st.st_nlink);
	}

	n = read(fds[PIPE_R], buf, sizeof(buf));
	fprintf(f, "pipe_bytes %zd\npipe_ok %d\n", n, n > 0 && check_pattern(buf, n, 'a'));
	fprintf(f, "pipe_size %d\n", fcntl(fds[PIPE_R], F_GETPIPE_SZ));
	n = read(fds[FIFO_R], buf, sizeof(buf));
	fprintf(f, "fifo_bytes %zd\nfifo_ok %d\n", n, n > 0 && check_pattern(buf, n, 'A'));
	n = read(fds[EFD], &counter, sizeof(counter));
	fprintf(f, "efd_read %zd\nefd_counter %llu\n", n, (unsigned long long)counter);

	snprintf(buf, sizeof(buf), "after %d\n", getpid());
	write_all(fds[LOG], buf, strlen(buf));
	fprintf(f, "pos_log %ld\n", (long)lseek(fds[LOG], 0, SEEK_CUR));

	if (getcwd(buf, sizeof(buf)))
		fprintf(f, "cwd %s\n", buf);
	mode_t m = umask(0);
	umask(m);
	fprintf(f, "umask %o\n", m);
	fprintf(f, "done 1\n");
	fclose(f);
	if (rename(tmp, path))
		die("rename report");
}

int main(int argc, char **argv)
{
	char buf[DATA_SIZE];
	int bad = 0, do_fork = 0, pipefd[2];
	sigset_t set;

	if (argc < 3)
		return 2;
	for (int i = 3; i < argc; i++) {
		bad |= !strcmp(argv[i], "--bad");
		do_fork |= !strcmp(argv[i], "--fork");
	}
	if (chdir(argv[1]))
		die("chdir");
	umask(027);

	fds[LOG] = open("log", O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (fds[LOG] < 0)
		die("open log");
	for (int i = 0; i < 10; i++) {
		snprintf(buf, sizeof(buf), "line %d\n", i);
		write_all(fds[LOG], buf, strlen(buf));
	}
	fds[LOG_DUP] = dup(fds[LOG]);

	fds[DATA] = open("data", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	fill(buf, DATA_SIZE, 7, 3);
	write_all(fds[DATA], buf, DATA_SIZE);
	lseek(fds[DATA], DATA_POS, SEEK_SET);

	fds[GHOST] = open("ghost", O_RDWR | O_CREAT, 0640);
	fill(buf, GHOST_SIZE, 13, 5);
	write_all(fds[GHOST], buf, GHOST_SIZE);
	lseek(fds[GHOST], GHOST_POS, SEEK_SET);
	unlink("ghost");

	/* Sparse and above CRIU's 3-page chunk threshold: saved in chunks. */
	fds[SPARSE] = open("sparse", O_RDWR | O_CREAT | O_TRUNC, 0600);
	fill(buf, 8192, 13, 5);
	write_all(fds[SPARSE], buf, 8192);
	if (pwrite(fds[SPARSE], buf, 4096, SPARSE_OFF) != 4096)
		die("pwrite sparse");
	lseek(fds[SPARSE], 7, SEEK_SET);
	unlink("sparse");

	fds[DEVNULL] = open("/dev/null", O_WRONLY | O_CLOEXEC);
	fds[URANDOM] = open("/dev/urandom", O_RDONLY | O_NONBLOCK);
	fds[DIRFD] = open(".", O_RDONLY | O_DIRECTORY);

	if (pipe(pipefd))
		die("pipe");
	fds[PIPE_R] = pipefd[0];
	fds[PIPE_W] = pipefd[1];
	fcntl(fds[PIPE_R], F_SETFL, O_NONBLOCK);
	if (fcntl(fds[PIPE_W], F_SETPIPE_SZ, PIPE_SIZE) < 0)
		die("F_SETPIPE_SZ");
	for (int i = 0; i < PIPE_BYTES; i++)
		buf[i] = 'a' + i % 26;
	write_all(fds[PIPE_W], buf, PIPE_BYTES);

	if (mkfifo("fifo", 0600))
		die("mkfifo");
	fds[FIFO_R] = open("fifo", O_RDONLY | O_NONBLOCK);
	fds[FIFO_W] = open("fifo", O_WRONLY | O_NONBLOCK | O_CLOEXEC);
	for (int i = 0; i < FIFO_BYTES; i++)
		buf[i] = 'A' + i % 26;
	write_all(fds[FIFO_W], buf, FIFO_BYTES);

	fds[EFD] = eventfd(5, EFD_NONBLOCK | EFD_CLOEXEC);
	{
		uint64_t more = EFD_COUNTER - 5;
		if (write(fds[EFD], &more, sizeof(more)) != sizeof(more))
			die("eventfd write");
	}
	fds[OPATH] = open("data", O_PATH);

	for (int i = 0; i < NFDS; i++) {
		if (fds[i] < 0) {
			fprintf(stderr, "fds_target: %s failed\n", names[i]);
			return 2;
		}
		note(names[i], fds[i]);
	}

	if (bad) {
		struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		int s = socket(AF_INET, SOCK_STREAM, 0), in, sfd;
		sigset_t m;

		if (s < 0 || bind(s, (struct sockaddr *)&sa, sizeof(sa)) || listen(s, 1))
			die("tcp socket");
		in = inotify_init1(0);
		if (in < 0 || inotify_add_watch(in, ".", IN_CREATE) < 0)
			die("inotify");
		sigemptyset(&m);
		sigaddset(&m, SIGUSR2);
		sfd = signalfd(-1, &m, 0);
		if (sfd < 0)
			die("signalfd");
		note("tcp", s);
		note("inotify", in);
		note("signalfd", sfd);
	}

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGTERM);
	sigprocmask(SIG_BLOCK, &set, NULL);

	if (do_fork) {
		pid_t child;

		/* Children are reaped by the kernel: killed first, the child leaves
		 * no zombie behind even while we are stopped (PID 1 may not reap). */
		signal(SIGCHLD, SIG_IGN);
		child = fork();
		if (child < 0)
			die("fork");
		if (child == 0) {
			close(atoi(argv[2])); /* only the parent answers READY */
			goto serve;
		}
		note("child", child);
	}

	line_len += snprintf(line + line_len, sizeof(line) - line_len, "\n");
	write_all(atoi(argv[2]), line, line_len);
	close(atoi(argv[2]));

serve:
	for (;;) {
		int sig = sigwaitinfo(&set, NULL);
		if (sig == SIGUSR1)
			report();
		else if (sig == SIGTERM)
			return 0;
	}
}
