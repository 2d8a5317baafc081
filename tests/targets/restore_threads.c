/* Restore test target: 8 threads, each in a different state when dumped.
 *
 *   restore_threads READY_FD LOG
 *
 * Every line goes to LOG (O_APPEND, one write per line). At start:
 *   "fds A_READ A_WRITE B_READ B_WRITE" and "tid NAME TID" for each thread.
 * Then, each thread with a counter logs "NAME N" (N = 1, 2, ...):
 *   main     select() with a 150 ms timeout;
 *   busy     a user-space spin loop, a line every ~50 ms;
 *   reader   blocked in read() of the empty pipe A; logs "reader N got TEXT"
 *            per read, and "go" in TEXT sets the go flag;
 *   holder   poll() with a 100 ms timeout; owns pipe B, holding
 *            "unread bytes in pipe B" that nobody reads until go, when it
 *            logs "holder drained TEXT";
 *   sleeper  nanosleep(200 ms); wakes the futex waiter after each sleep;
 *   futex    FUTEX_WAIT without timeout; logs after each wake;
 *   altstack pause() with its own sigaltstack; the SIGUSR1 handler (SA_ONSTACK)
 *            checks it runs on that stack: "usr1 N onstack=1";
 *   pending  clock_nanosleep(100 ms), with SIGUSR2 blocked and pending since
 *            start ("pending armed 1"); at go it unblocks it: "usr2 delivered".
 * Every thread but altstack blocks SIGUSR1, so kill(pid, SIGUSR1) reaches it.
 * READY is written when every thread has logged its first line.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NTHREADS 7 /* besides main */
#define ALTSTACK_SIZE (64 * 1024)
#define PIPE_B_TEXT "unread bytes in pipe B"

static int logfd;
static int pipe_a[2], pipe_b[2];
static volatile sig_atomic_t go;
static atomic_int started;
static _Atomic uint32_t futex_word;
static char *altstack;
static volatile sig_atomic_t usr1_count, usr1_onstack, usr2_count;

static void say(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (write(logfd, buf, n) != n)
		_exit(3);
}

static pid_t gettid_(void) { return (pid_t)syscall(SYS_gettid); }

static void hello(const char *name)
{
	say("tid %s %d\n", name, gettid_());
	atomic_fetch_add(&started, 1);
}

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void *busy(void *arg)
{
	(void)arg;
	hello("busy");
	unsigned long n = 0, spins = 0;
	double last = now_ms();
	for (;;) {
		if ((++spins & 0xfffff) == 0 && now_ms() - last >= 50) {
			last = now_ms();
			say("busy %lu\n", ++n);
		}
	}
	return NULL;
}

static void *reader(void *arg)
{
	(void)arg;
	hello("reader");
	unsigned long n = 0;
	char buf[128];
	for (;;) {
		ssize_t k = read(pipe_a[0], buf, sizeof(buf) - 1);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			say("reader error %zd %d\n", k, errno);
			pause();
		}
		while (k > 0 && (buf[k - 1] == '\n'))
			k--;
		buf[k] = 0;
		say("reader %lu got %s\n", ++n, buf);
		if (strstr(buf, "go"))
			go = 1;
	}
	return NULL;
}

static void *holder(void *arg)
{
	(void)arg;
	hello("holder");
	unsigned long n = 0;
	int drained = 0;
	for (;;) {
		poll(NULL, 0, 100);
		if (go && !drained) {
			char buf[128];
			ssize_t k = read(pipe_b[0], buf, sizeof(buf) - 1);
			buf[k > 0 ? k : 0] = 0;
			say("holder drained %s\n", buf);
			drained = 1;
		}
		say("holder %lu\n", ++n);
	}
	return NULL;
}

static void *sleeper(void *arg)
{
	(void)arg;
	hello("sleeper");
	unsigned long n = 0;
	struct timespec ts = { 0, 200 * 1000 * 1000 };
	for (;;) {
		nanosleep(&ts, NULL);
		say("sleeper %lu\n", ++n);
		atomic_fetch_add(&futex_word, 1);
		syscall(SYS_futex, &futex_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
	}
	return NULL;
}

static void *futexer(void *arg)
{
	(void)arg;
	hello("futex");
	unsigned long n = 0;
	for (;;) {
		uint32_t seen = atomic_load(&futex_word);
		syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
		if (atomic_load(&futex_word) != seen)
			say("futex %lu\n", ++n);
	}
	return NULL;
}

static void on_usr1(int sig)
{
	(void)sig;
	char here;
	usr1_onstack = (&here >= altstack && &here < altstack + ALTSTACK_SIZE);
	usr1_count++;
}

static void *altstacker(void *arg)
{
	(void)arg;
	stack_t ss = { .ss_sp = altstack, .ss_size = ALTSTACK_SIZE, .ss_flags = 0 };
	if (sigaltstack(&ss, NULL))
		say("altstack error %d\n", errno);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	hello("altstack");
	int seen = 0;
	for (;;) {
		pause();
		while (seen < usr1_count)
			say("usr1 %d onstack=%d\n", ++seen, (int)usr1_onstack);
	}
	return NULL;
}

static void on_usr2(int sig)
{
	(void)sig;
	usr2_count++;
}

static void *pending(void *arg)
{
	(void)arg;
	/* SIGUSR2 is blocked in every thread (inherited from main): send it to
	 * this thread only, where it stays pending until go. */
	syscall(SYS_tgkill, getpid(), gettid_(), SIGUSR2);
	sigset_t p;
	sigpending(&p);
	say("pending armed %d\n", sigismember(&p, SIGUSR2));
	hello("pending");
	unsigned long n = 0;
	int unblocked = 0;
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	for (;;) {
		t.tv_nsec += 100 * 1000 * 1000;
		if (t.tv_nsec >= 1000000000) {
			t.tv_sec++;
			t.tv_nsec -= 1000000000;
		}
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
		if (go && !unblocked) {
			sigset_t set;
			sigemptyset(&set);
			sigaddset(&set, SIGUSR2);
			pthread_sigmask(SIG_UNBLOCK, &set, NULL);
			unblocked = 1;
			say("usr2 delivered %d\n", (int)usr2_count);
		}
		say("pending %lu\n", ++n);
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
	if (logfd < 0 || pipe(pipe_a) || pipe(pipe_b))
		return 1;
	if (write(pipe_b[1], PIPE_B_TEXT, strlen(PIPE_B_TEXT)) != (ssize_t)strlen(PIPE_B_TEXT))
		return 1;
	altstack = mmap(NULL, ALTSTACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (altstack == MAP_FAILED)
		return 1;
	struct sigaction sa = { .sa_handler = on_usr1, .sa_flags = SA_ONSTACK };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_usr2;
	sa.sa_flags = 0;
	sigaction(SIGUSR2, &sa, NULL);
	sigset_t block;
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &block, NULL);

	say("fds %d %d %d %d\n", pipe_a[0], pipe_a[1], pipe_b[0], pipe_b[1]);
	hello("main");
	void *(*fns[NTHREADS])(void *) = { busy, reader, holder, sleeper, futexer, altstacker, pending };
	for (int i = 0; i < NTHREADS; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, fns[i], NULL))
			return 1;
	}
	while (atomic_load(&started) < NTHREADS + 1)
		usleep(1000);
	if (write(ready, "READY\n", 6) != 6)
		return 1;
	close(ready);

	unsigned long n = 0;
	for (;;) {
		struct timeval tv = { 0, 150 * 1000 };
		select(0, NULL, NULL, NULL, &tv);
		say("main %lu\n", ++n);
	}
}
