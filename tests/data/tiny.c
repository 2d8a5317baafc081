/*
 * tiny.c: a process with almost no memory, for the checked-in checkpoints
 * in this directory (see README.txt). x86_64 Linux, no libc:
 *
 *     gcc -Os -static -nostdlib -ffreestanding -fno-stack-protector \
 *         -fno-tree-loop-distribute-patterns -fno-asynchronous-unwind-tables \
 *         -o tiny tiny.c
 *
 * It maps TINY_PAGES private anonymous pages at TINY_ADDR, fills page k with
 * byte (k * 64 + j % 61) at offset j, prints "READY\n" and sleeps in read(0)
 * until stdin closes. tests/test_format_compat.py checks that content.
 */

#define TINY_ADDR 0x10000000UL
#define TINY_PAGES 4
#define PAGE 4096

#define SYS_read 0
#define SYS_write 1
#define SYS_mmap 9
#define SYS_exit_group 231
#define PROT_RW 3
#define MAP_PRIVATE_ANON_FIXED_NOREPLACE (0x02 | 0x20 | 0x100000)

static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	long ret;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

void _start(void)
{
	unsigned char *p = (unsigned char *)sys6(SYS_mmap, TINY_ADDR, TINY_PAGES * PAGE, PROT_RW,
						  MAP_PRIVATE_ANON_FIXED_NOREPLACE, -1, 0);
	char c;

	if ((unsigned long)p != TINY_ADDR)
		sys6(SYS_exit_group, 1, 0, 0, 0, 0, 0);
	for (int k = 0; k < TINY_PAGES; k++)
		for (int j = 0; j < PAGE; j++)
			p[k * PAGE + j] = (unsigned char)(k * 64 + j % 61);
	sys6(SYS_write, 1, (long)"READY\n", 6, 0, 0, 0);
	while (sys6(SYS_read, 0, (long)&c, 1, 0, 0, 0) > 0)
		;
	sys6(SYS_exit_group, 0, 0, 0, 0, 0, 0);
}
