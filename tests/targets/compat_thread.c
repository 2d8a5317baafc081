/* A 64-bit process one of whose threads runs 32-bit code: it far-jumps to
 * the compat code segment (__USER32_CS, 0x23) into a loop in low memory.
 * Syscall injection must refuse it, not hang (the bytes of a 64-bit
 * `syscall` mean something else there). Prints READY.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

static void *compat(void *arg)
{
	unsigned char *code = arg;
	struct {
		uint32_t off;
		uint16_t sel;
	} __attribute__((packed)) far = { (uint32_t)(uintptr_t)code, 0x23 };
	__asm__ volatile("ljmpl *%0" ::"m"(far));
	return NULL;
}

int main(void)
{
	unsigned char *code = mmap(0, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
				   MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
	pthread_t t;

	if (code == MAP_FAILED)
		return 1;
	code[0] = 0xf3; /* 1: pause */
	code[1] = 0x90;
	code[2] = 0xeb; /* jmp 1b */
	code[3] = 0xfc;
	if (pthread_create(&t, 0, compat, code))
		return 1;
	printf("READY\n");
	fflush(stdout);
	for (;;)
		pause();
}
