#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
static void handler(int s) { (void)s; }
static void *sleeper(void *a) { (void)a; for (;;) { struct timespec t = {100, 0}; nanosleep(&t, 0); } }
static void *alt(void *a) {
    (void)a;
    stack_t ss = { .ss_sp = malloc(65536), .ss_size = 65536, .ss_flags = 0 };
    sigaltstack(&ss, 0);
    sigset_t m; sigemptyset(&m); sigaddset(&m, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &m, 0);
    for (;;) pause();
}
int main(void) {
    struct sigaction sa; memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler; sa.sa_flags = SA_RESTART | SA_ONSTACK; sigaddset(&sa.sa_mask, SIGINT);
    sigaction(SIGUSR1, &sa, 0);
    signal(SIGPIPE, SIG_IGN);
    setpriority(PRIO_PROCESS, 0, 5);
    struct rlimit rl = {1000, 2000}; setrlimit(RLIMIT_NOFILE, &rl);
    struct itimerval it = {{7, 0}, {7, 0}}; setitimer(ITIMER_VIRTUAL, &it, 0);
    sigset_t m; sigemptyset(&m); sigaddset(&m, SIGUSR2); sigprocmask(SIG_BLOCK, &m, 0);
    pthread_t a, b;
    pthread_create(&a, 0, sleeper, 0);
    pthread_create(&b, 0, alt, 0);
    umask(027);
    printf("READY\n"); fflush(stdout);
    for (;;) pause();
}
