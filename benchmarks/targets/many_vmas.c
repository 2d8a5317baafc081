/* The many-VMA target of the peers benchmark.
 *
 *   many_vmas PAGES many|one
 *
 * Maps PAGES private anonymous pages in one block and writes every page
 * (its index, then a pattern). "many" then makes every other page
 * read-only, so the block is PAGES one-page VMAs that cannot merge; "one"
 * leaves it one VMA holding the same pages. Prints "READY ADDR SIZE" and
 * idles until stdin closes (or its parent dies). PAGES + the program's own
 * VMAs must stay under vm.max_map_count (65530 by default).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#define PAGE 4096UL

int main(int argc, char **argv)
{
	if (argc != 3 || (strcmp(argv[2], "many") && strcmp(argv[2], "one"))) {
		fprintf(stderr, "usage: %s PAGES many|one\n", argv[0]);
		return 2;
	}
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	size_t pages = strtoull(argv[1], NULL, 10);
	unsigned char *buf = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	for (size_t p = 0; p < pages; p++) {
		memset(buf + p * PAGE, (int)(p % 251) + 1, PAGE);
		memcpy(buf + p * PAGE, &p, sizeof(p));
	}
	if (argv[2][0] == 'm')
		for (size_t p = 1; p < pages; p += 2)
			if (mprotect(buf + p * PAGE, PAGE, PROT_READ)) {
				perror("mprotect");
				return 1;
			}
	printf("READY %lu %zu\n", (unsigned long)(uintptr_t)buf, pages * PAGE);
	fflush(stdout);
	char c;
	while (read(0, &c, 1) > 0)
		;
	return 0;
}
