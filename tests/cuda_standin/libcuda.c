/* A stand-in for the CUDA driver library (libcuda.so.1) for machines without a
 * GPU: the same exported host-memory entry points with the same calling
 * conventions, and the same kind of memory: the real driver backs pinned host
 * allocations with MAP_SHARED anonymous mappings (/dev/zero (deleted) in
 * /proc), populated at once, and pins registered memory in place. */
#define _GNU_SOURCE
#include <stddef.h>
#include <sys/mman.h>

typedef int CUresult;
enum { CUDA_SUCCESS = 0, CUDA_ERROR_OUT_OF_MEMORY = 2, CUDA_ERROR_INVALID_VALUE = 1 };

/* The real library is ~100 MiB; this keeps the stand-in over ramwatchd's 1 MiB
 * mmap reporting threshold, so loading it is seen as the real one's is. */
__attribute__((used)) static const char size_of_a_real_driver[2 << 20] = { 1 };

#define MAX_ALLOCATIONS 64
static struct { void *p; size_t size; } allocations[MAX_ALLOCATIONS];

static CUresult host_alloc(void **pp, size_t size)
{
	for (int i = 0; i < MAX_ALLOCATIONS; i++) {
		if (allocations[i].p)
			continue;
		void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
			       MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
		if (p == MAP_FAILED)
			return CUDA_ERROR_OUT_OF_MEMORY;
		allocations[i].p = p;
		allocations[i].size = size;
		*pp = p;
		return CUDA_SUCCESS;
	}
	return CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult cuMemHostAlloc(void **pp, size_t size, unsigned int flags)
{
	(void)flags;
	return host_alloc(pp, size);
}

CUresult cuMemAllocHost(void **pp, size_t size) { return host_alloc(pp, size); }
CUresult cuMemAllocHost_v2(void **pp, size_t size) { return host_alloc(pp, size); }

CUresult cuMemFreeHost(void *p)
{
	for (int i = 0; i < MAX_ALLOCATIONS; i++) {
		if (allocations[i].p == p) {
			munmap(p, allocations[i].size);
			allocations[i].p = NULL;
			return CUDA_SUCCESS;
		}
	}
	return CUDA_ERROR_INVALID_VALUE;
}

static CUresult host_register(void *p, size_t size)
{
	/* Pinning makes every page resident. */
	return madvise(p, size, MADV_POPULATE_WRITE) ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

CUresult cuMemHostRegister(void *p, size_t size, unsigned int flags)
{
	(void)flags;
	return host_register(p, size);
}

CUresult cuMemHostRegister_v2(void *p, size_t size, unsigned int flags)
{
	(void)flags;
	return host_register(p, size);
}

CUresult cuMemHostUnregister(void *p)
{
	(void)p;
	return CUDA_SUCCESS;
}
