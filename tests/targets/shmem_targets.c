/* Shared memory targets for tests/test_shmem.py and tests/test_tree.py.
 *
 * Run as: shmem_targets READY_FD LOG MODE [ARGS...] (tests/targets/
 * restore_support.Target's protocol: prints one JSON line on stdout, then
 * writes "READY\n" to READY_FD and closes it). Modes:
 *
 *   prefork SHARED_MIB INHERITED_MIB PRIVATE_MIB WORKERS
 *       A pre-fork server. The parent maps SHARED_MIB of MAP_SHARED|MAP_ANONYMOUS
 *       memory and a memfd ("prefork-memfd", 2 MiB, the first 1 MiB mapped,
 *       the second written with pwrite only: pages only the object holds),
 *       fills INHERITED_MIB of private memory, then forks WORKERS workers.
 *       Each worker fills PRIVATE_MIB of private memory of its own and never
 *       writes the inherited memory. Everybody bumps its counter forever:
 *       slot i (0 = parent, 1.. = workers) of the shared buffer's first page
 *       and of the memfd's first page hold u64 counters; slot 32+i of the
 *       shared page holds worker i's private address, 64+i its pid.
 *       Data: xorshift64 streams, seed 1 (shared), 2 (memfd), 3 (inherited),
 *       100+i (worker i's private), from page 1 on for the shared objects.
 *   sysv     one SysV segment of 1 MiB (pages 2 and 5 written 'S'/'T'),
 *            attached by the parent and a forked child; marked IPC_RMID.
 *   sealed   a memfd "sealed-memfd" of 3 pages written with write(), sealed
 *            F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE, held by a descriptor only;
 *            and a memfd "grow-sealed" of 2 pages, sealed F_SEAL_SHRINK|
 *            F_SEAL_GROW, mapped shared read-write and written through the map.
 *   sealed-mapped  the first memfd, also mapped read-only (CRIU 4.2 cannot
 *            restore that: it maps before sealing, F_SEAL_WRITE then fails).
 *   sparse   1 TiB of MAP_SHARED|MAP_ANONYMOUS|MAP_NORESERVE memory with 1000
 *            pages written (page k*262139, first byte k&0xff ^ 0x5a).
 *
 * Every process then sleeps in a loop; the parent leads its session.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>

#define MIB (1UL << 20)
#define PAGE 4096UL

static int ready_fd;

static void fill(void *p, size_t n, uint64_t seed)
{
	uint64_t *w = p, x = seed * 0x9E3779B97F4A7C15ULL + 1;
	for (size_t i = 0; i < n / 8; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		w[i] = x;
	}
}

static void *map(size_t n, int flags, int fd)
{
	void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, flags, fd, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	return p;
}

static void ready(void)
{
	if (write(ready_fd, "READY\n", 6) != 6)
		exit(1);
	close(ready_fd);
}

static void tick(volatile uint64_t *a, volatile uint64_t *b)
{
	struct timespec ts = {0, 2000000};
	for (;;) {
		if (a)
			(*a)++;
		if (b)
			(*b)++;
		nanosleep(&ts, NULL);
	}
}

static int prefork(int argc, char **argv)
{
	if (argc < 4)
		return 2;
	size_t shared_n = strtoul(argv[0], 0, 0) * MIB, inh_n = strtoul(argv[1], 0, 0) * MIB;
	size_t priv_n = strtoul(argv[2], 0, 0) * MIB;
	int workers = atoi(argv[3]);

	volatile uint64_t *shared = map(shared_n, MAP_SHARED | MAP_ANONYMOUS, -1);
	fill((char *)shared + PAGE, shared_n - PAGE, 1);
	int mfd = memfd_create("prefork-memfd", 0);
	if (mfd < 0 || ftruncate(mfd, 2 * MIB))
		return 1;
	volatile uint64_t *mem = map(MIB, MAP_SHARED, mfd);
	fill((char *)mem + PAGE, MIB - PAGE, 2);
	char buf[PAGE];
	fill(buf, PAGE, 4);
	for (int k = 0; k < 4; k++) /* object-only pages: never mapped */
		if (pwrite(mfd, buf, PAGE, MIB + k * 64 * PAGE) != PAGE)
			return 1;
	char *inherited = map(inh_n, MAP_PRIVATE | MAP_ANONYMOUS, -1);
	fill(inherited, inh_n, 3);

	for (int i = 1; i <= workers; i++) {
		pid_t pid = fork();
		if (pid < 0)
			return 1;
		if (pid == 0) {
			char *priv = map(priv_n, MAP_PRIVATE | MAP_ANONYMOUS, -1);
			fill(priv, priv_n, 100 + i);
			shared[32 + i] = (uint64_t)(uintptr_t)priv;
			shared[64 + i] = getpid();
			tick(&shared[i], &mem[i]);
		}
	}
	for (int i = 1; i <= workers; i++)
		while (!shared[64 + i])
			usleep(1000);
	printf("{\"shared\": %lu, \"shared_size\": %zu, \"memfd\": %lu, \"memfd_fd\": %d, \"inherited\": %lu, "
	       "\"inherited_size\": %zu, \"private_size\": %zu, \"workers\": [",
	       (unsigned long)(uintptr_t)shared, shared_n, (unsigned long)(uintptr_t)mem, mfd,
	       (unsigned long)(uintptr_t)inherited, inh_n, priv_n);
	for (int i = 1; i <= workers; i++)
		printf("%s{\"pid\": %lu, \"private\": %lu}", i > 1 ? ", " : "", (unsigned long)shared[64 + i],
		       (unsigned long)shared[32 + i]);
	printf("]}\n");
	fflush(stdout);
	ready();
	tick(&shared[0], &mem[0]);
	return 0;
}

static int sysv(void)
{
	int id = shmget(IPC_PRIVATE, MIB, IPC_CREAT | 0600);
	if (id < 0)
		return 1;
	char *p = shmat(id, NULL, 0);
	if (p == (void *)-1)
		return 1;
	memset(p + 2 * PAGE, 'S', PAGE);
	memset(p + 5 * PAGE, 'T', PAGE);
	pid_t child = fork();
	if (child == 0)
		tick(NULL, NULL);
	shmctl(id, IPC_RMID, NULL); /* gone with its last process */
	printf("{\"shmid\": %d, \"addr\": %lu, \"child\": %d}\n", id, (unsigned long)(uintptr_t)p, child);
	fflush(stdout);
	ready();
	tick(NULL, NULL);
	return 0;
}

static int sealed(int mapped)
{
	int fd = memfd_create("sealed-memfd", MFD_ALLOW_SEALING);
	char buf[3 * PAGE];
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = 'a' + i / PAGE;
	if (fd < 0 || write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf))
		return 1;
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE))
		return 1;
	void *p = NULL;
	if (mapped && (p = mmap(NULL, sizeof(buf), PROT_READ, MAP_SHARED, fd, 0)) == MAP_FAILED)
		return 1;
	int gfd = memfd_create("grow-sealed", MFD_ALLOW_SEALING);
	if (gfd < 0 || ftruncate(gfd, 2 * PAGE) || fcntl(gfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW))
		return 1;
	char *g = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, gfd, 0);
	if (g == MAP_FAILED)
		return 1;
	memset(g + PAGE, 'g', PAGE);
	printf("{\"fd\": %d, \"addr\": %lu, \"seals\": %d, \"gfd\": %d, \"gaddr\": %lu, \"gseals\": %d}\n", fd,
	       (unsigned long)(uintptr_t)p, fcntl(fd, F_GET_SEALS), gfd, (unsigned long)(uintptr_t)g,
	       fcntl(gfd, F_GET_SEALS));
	fflush(stdout);
	ready();
	tick(NULL, NULL);
	return 0;
}

static int sparse(void)
{
	size_t n = 1UL << 40;
	char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return 1;
	for (unsigned long k = 0; k < 1000; k++)
		p[k * 262139UL * PAGE] = (char)((k & 0xff) ^ 0x5a);
	printf("{\"addr\": %lu, \"size\": %zu}\n", (unsigned long)(uintptr_t)p, n);
	fflush(stdout);
	ready();
	tick(NULL, NULL);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 4)
		return 2;
	ready_fd = atoi(argv[1]);
	const char *mode = argv[3];
	if (!strcmp(mode, "prefork"))
		return prefork(argc - 4, argv + 4);
	if (!strcmp(mode, "sysv"))
		return sysv();
	if (!strcmp(mode, "sealed"))
		return sealed(0);
	if (!strcmp(mode, "sealed-mapped"))
		return sealed(1);
	if (!strcmp(mode, "sparse"))
		return sparse();
	return 2;
}
