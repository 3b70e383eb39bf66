/* Map and fill SIZE_MIB MiB from a function two calls below main, then hold
 * it until stdin closes. Built with frame pointers, so the kernel's user
 * stack walk reaches load_model (its callee, reserve_cache, calls the libc
 * wrapper from a frame the walk passes over: the wrapper keeps no frame).
 *
 *     native_sites SIZE_MIB
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

__attribute__((noinline)) static char *reserve_cache(size_t size)
{
	char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	memset(p, 1, size);
	return p;
}

__attribute__((noinline)) static char *load_model(size_t size)
{
	char *cache = reserve_cache(size);
	__asm__ volatile("" ::: "memory");   /* no tail call: load_model keeps its frame */
	return cache;
}

int main(int argc, char **argv)
{
	size_t size = (size_t)atoi(argc > 1 ? argv[1] : "48") << 20;
	char *cache = load_model(size);
	printf("ready %p\n", (void *)cache);
	fflush(stdout);
	while (getchar() != EOF)
		;
	return cache[0] == 1 ? 0 : 1;
}
