/* ramwatchd's kernel side: one program, compiled by bcc at start-up.
 *
 * Reads only tracepoint arguments, perf-event data, pt_regs and user memory:
 * the kernel headers on our hosts may not match the running kernel, so no
 * kernel struct is ever dereferenced here.
 *
 * One file per concern, included here so that they share the maps below.
 * Which programs are attached is decided in user space
 * (ramwatchd/kernel/probes.py); the settings are constants given with -D:
 *   TRACE_ALL              every process is traced (the daemon): state is
 *                          claimed on a process's first event
 *   RSS_FROM_FAULTS        page faults, not rss_stat, say when RSS moves
 *   RSS_STEP_BYTES         EXACT_RSS: a step when RSS moved this much
 *   RSS_STEP_CHANGES       otherwise: a step after this many counter changes,
 *   RSS_STEP_NS            or this long after the last one
 *   MIN_SYSCALL_BYTES      smaller mmap/munmap/mremap/madvise calls are counted, not sent
 *   MAX_CALLS_PER_S        a process's mm calls beyond this rate are counted, not sent
 *   LARGE_CALL_BYTES       calls this large have a rate of their own
 *   MAX_WRITES_PER_S       a process's writes to stdout/stderr beyond this rate are not sent
 *   FAULT_SAMPLE_PERIOD    one fault in this many is counted per (tgid, region)
 *   STACKS                 send the stacks behind mm calls and sampled faults (captures)
 *   FAULT_STACK_PERIOD     with STACKS: one sampled fault in this many sends its stacks
 *   FAULT_REGION_SHIFT     fault samples are counted per (tgid, addr >> shift)
 *   PAGE_BYTES             the page size
 *   HAVE_EXIT_GROUP_DEAD   sched_process_exit has group_dead (kernel >= 6.7)
 *   TRACED_SLOTS           size of the slot array, a power of two
 */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>
#include "ramwatchd.h"
#include "traced.bpf.h"
#include "rss.bpf.c"
#include "stacks.bpf.c"
#include "faults.bpf.c"
#include "mm_calls.bpf.c"
#include "output.bpf.c"
#include "page_cache.bpf.c"
#include "cuda.bpf.c"
#include "tree.bpf.c"
