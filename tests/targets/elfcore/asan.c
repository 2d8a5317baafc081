/* An AddressSanitizer-built program for tests/test_elfcore.py and
 * benchmarks/core.py: a known function with a known local and a known heap
 * string; ASan's shadow (~16 TiB reserved, MADV_DONTDUMP) is around it.
 * Optional argument: MiB of heap to fill. Prints "READY <pid>", then waits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char *asan_heap_string;

__attribute__((noinline)) void asan_wait(long mib)
{
	volatile long asan_local = 6006;
	char *fill = mib > 0 ? malloc(mib << 20) : NULL;
	if (fill)
		memset(fill, 0x5a, mib << 20);
	printf("READY %d\n", getpid());
	fflush(stdout);
	for (;;)
		pause();
	free(fill);
	(void)asan_local;
}

int main(int argc, char **argv)
{
	asan_heap_string = strdup("the known heap string of the asan program");
	asan_wait(argc > 1 ? atol(argv[1]) : 0);
	return 0;
}
