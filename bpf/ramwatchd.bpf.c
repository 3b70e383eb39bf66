/* ramwatchd's kernel side, compiled by bcc at start-up.
 *
 * Reads only tracepoint arguments, perf-event data and user memory: the kernel
 * headers on our hosts may not match the running kernel, so no kernel struct
 * is ever dereferenced here.
 *
 * Build-time knobs (-D from ramwatchd/probes.py):
 *   FOLLOW_CHILDREN        trace children of traced processes as they fork
 *   TRACE_ALL              trace every process (the daemon): claim state on first sight
 *   MM_SYSCALLS            attach the mm syscall programs (captures)
 *   PAGE_CACHE_FILLS       attach the filemap programs (captures)
 *   OUTPUT_WRITES          time writes to stdout and stderr (`ramwatchd run`)
 *   EXACT_RSS              read sizes from kmem:rss_stat itself (see the RSS section)
 *   RSS_FROM_FAULTS        page faults, not rss_stat, say when RSS moves (captures)
 *   RSS_STEP_BYTES         EXACT_RSS: emit EV_RSS_STEP when RSS moves this much
 *   RSS_STEP_CHANGES       otherwise: emit it after this many counter changes,
 *   RSS_STEP_NS            or this long after the last one, whichever comes first
 *   MIN_SYSCALL_BYTES      smaller mmap/munmap/mremap/madvise calls are not sent
 *   FAULTS_FROM_PERF       sample faults with a perf event (no page_fault_user)
 *   FAULT_SAMPLE_PERIOD    count one fault in this many, per (tgid, region)
 *   FAULT_REGION_SHIFT     fault samples are counted per (tgid, addr >> shift)
 *   PAGE_BYTES             the page size
 *   HAVE_EXIT_GROUP_DEAD   sched_process_exit has group_dead (kernel >= 6.7)
 *   TRACED_SLOTS           size of the slot array, a power of two
 */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>
#include "ramwatchd.h"

/* Which processes are traced, and their state. The hot paths (one call per
 * page fault) look in `slots` first: an array indexed by tgid, whose lookup
 * the verifier inlines, costs a few ns where a hash lookup costs ~20 ns.
 * Only a process whose slot another process holds lives in `traced`; a
 * capture sets hash_used when that first happens, so until then an untraced
 * process's fault costs no hash lookup either. */
BPF_ARRAY(slots, struct proc_state, TRACED_SLOTS);
BPF_HASH(traced, u32, struct proc_state, 16384);
BPF_ARRAY(hash_used, u32, 1);
/* tid -> the arguments of an mm syscall between its enter and its exit. */
BPF_HASH(inflight, u32, struct event, 4096);
BPF_HASH(fault_samples, struct fault_key, u64, 65536);
BPF_HASH(files, struct file_key, struct file_cache, 16384);
BPF_PERCPU_ARRAY(stats, u64, NR_STATS);
BPF_RINGBUF_OUTPUT(events, 256);

static __always_inline void stat_inc(u32 index)
{
	u64 *n = stats.lookup(&index);
	if (n)
		(*n)++;
}

static __always_inline u32 current_tgid(void)
{
	return bpf_get_current_pid_tgid() >> 32;
}

/* Take tgid's slot if it is free, with fresh state. Two CPUs may race for
 * one slot: the compare-and-swap lets exactly one of them win. */
static __always_inline struct proc_state *claim_slot(u32 tgid)
{
	u32 slot = tgid & (TRACED_SLOTS - 1);
	struct proc_state *st = slots.lookup(&slot);
	if (!st || __sync_val_compare_and_swap(&st->tgid, 0, tgid) != 0)
		return NULL;
	__builtin_memset((char *)st + sizeof(st->tgid), 0, sizeof(*st) - sizeof(st->tgid));
	return st;
}

static __always_inline struct proc_state *traced_state(u32 tgid)
{
	if (!tgid)
		return NULL;   /* the idle task; 0 also marks a free slot */
	u32 slot = tgid & (TRACED_SLOTS - 1);
	struct proc_state *st = slots.lookup(&slot);
	if (st && st->tgid == tgid)
		return st;
#ifdef TRACE_ALL
	struct proc_state *claimed = claim_slot(tgid);
	if (claimed)
		return claimed;
	struct proc_state fresh = { .tgid = tgid };
	return traced.lookup_or_try_init(&tgid, &fresh);
#else
	u32 zero = 0;
	u32 *used = hash_used.lookup(&zero);
	if (!used || !*used)
		return NULL;
	return traced.lookup(&tgid);
#endif
}

static __always_inline bool is_traced(u32 tgid)
{
	return traced_state(tgid) != NULL;
}

/* Reserve a zeroed ring-buffer record stamped with time and task. */
static __always_inline struct event *new_event(u32 kind)
{
	struct event *e = events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		stat_inc(STAT_EVENTS_LOST);
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	u64 id = bpf_get_current_pid_tgid();
	e->ts_ns = bpf_ktime_get_ns();
	e->tgid = id >> 32;
	e->tid = (u32)id;
	e->kind = kind;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	return e;
}

/* ---- RSS: when a process's counters move --------------------------------
 *
 * kmem:rss_stat fires once per counter change, about once per 4 KiB page
 * faulted. As a classic tracepoint it formats a record for every firing even
 * for an empty program: ~8 % on a first-touch fault loop here
 * (bench/fault_path.py). As a raw tracepoint it costs what any per-fault
 * hook does (~2.5 %), but passes only (mm, member): the sizes would need
 * mm_struct, which we never read. So by default the kernel only counts
 * changes and wakes user space every RSS_STEP_CHANGES of them or RSS_STEP_NS,
 * and user space reads the exact counters from /proc/PID/status right then.
 *
 * A capture also traces the mm syscalls, which cover every other way a
 * process's own RSS moves (populate, munmap, madvise, brk), so there the page
 * faults themselves are the trigger (RSS_FROM_FAULTS): one raw tracepoint per
 * fault instead of two. The daemon traces no syscalls and counts rss_stat.
 * EXACT_RSS keeps the exact per-member sizes and peaks in the kernel instead,
 * at the classic tracepoint's cost. */

static __always_inline void emit_rss_step(struct proc_state *st)
{
	struct event *e = new_event(EV_RSS_STEP);
	if (!e)
		return;
	__builtin_memcpy(e->rss, st->rss, sizeof(e->rss));
	/* No wakeup: user space drains the buffer every 50 ms anyway, and a
	 * wakeup costs the faulting CPU an interrupt. Syscall events, which
	 * mark the moments that matter (the end of a populate, an munmap),
	 * force one. */
	events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

/* Called once in several counter changes, already added to st->changes: the
 * clock read costs more than the rest of a probe, so no caller pays it for
 * every change. */
static __always_inline void rss_moved(struct proc_state *st)
{
	u64 now = bpf_ktime_get_ns();
	if (st->changes < RSS_STEP_CHANGES && now - st->last_step_ns < RSS_STEP_NS)
		return;
	st->changes = 0;
	st->last_step_ns = now;
	emit_rss_step(st);
}

#if defined(EXACT_RSS)
TRACEPOINT_PROBE(kmem, rss_stat)
{
	/* curr == 0: another mm changed (teardown, reaping); exits are
	 * reported by sched_process_exit instead. */
	if (!args->curr)
		return 0;
	struct proc_state *st = traced_state(current_tgid());
	if (!st)
		return 0;
	u32 member = args->member;
	if (member >= NR_RSS_MEMBERS)
		return 0;
	st->rss[member] = args->size;
	if (member == RSS_SWAP)
		return 0;

	u64 total = st->rss[RSS_FILE] + st->rss[RSS_ANON] + st->rss[RSS_SHMEM];
	if (total > st->peak) {
		st->peak = total;
		st->peak_ns = bpf_ktime_get_ns();
		__builtin_memcpy(st->peak_rss, st->rss, sizeof(st->rss));
	}
	s64 moved = total - st->last_step;
	if (moved < RSS_STEP_BYTES && moved > -RSS_STEP_BYTES)
		return 0;
	st->last_step = total;
	emit_rss_step(st);
	return 0;
}
#elif !defined(RSS_FROM_FAULTS)
RAW_TRACEPOINT_PROBE(rss_stat)
{
	struct proc_state *st = traced_state(current_tgid());
	if (st && (++st->changes & 7) == 0)
		rss_moved(st);
	return 0;
}
#endif

/* ---- mm syscalls: arguments at enter, result at exit -------------------- */
#ifdef MM_SYSCALLS

static __always_inline void syscall_enter(u32 kind, u64 addr, u64 len, u64 prot,
					  u64 flags, s32 fd)
{
	u64 id = bpf_get_current_pid_tgid();
	if (!is_traced(id >> 32))
		return;
	struct event e = {};
	e.kind = kind;
	e.addr = addr;
	e.len = len;
	e.prot = prot;
	e.flags = flags;
	e.fd = fd;
	u32 tid = (u32)id;
	if (inflight.update(&tid, &e))
		stat_inc(STAT_INFLIGHT_FULL);
}

static __always_inline void syscall_exit(s64 ret)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct event *args = inflight.lookup(&tid);
	if (!args)
		return;
	struct event *e = new_event(args->kind);
	if (e) {
		e->addr = args->addr;
		e->len = args->len;
		e->prot = args->prot;
		e->flags = args->flags;
		e->fd = args->fd;
		e->ret = ret;
		__builtin_memcpy(e->name, args->name, sizeof(e->name));
		events.ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	}
	inflight.delete(&tid);
}

TRACEPOINT_PROBE(syscalls, sys_enter_mmap)
{
	if (args->len >= MIN_SYSCALL_BYTES)
		syscall_enter(EV_MMAP, args->addr, args->len, args->prot, args->flags, (s32)args->fd);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_mmap) { syscall_exit(args->ret); return 0; }

TRACEPOINT_PROBE(syscalls, sys_enter_munmap)
{
	if (args->len >= MIN_SYSCALL_BYTES)
		syscall_enter(EV_MUNMAP, args->addr, args->len, 0, 0, -1);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_munmap) { syscall_exit(args->ret); return 0; }

/* mremap: prot carries old_len, len the new length. */
TRACEPOINT_PROBE(syscalls, sys_enter_mremap)
{
	if (args->old_len >= MIN_SYSCALL_BYTES || args->new_len >= MIN_SYSCALL_BYTES)
		syscall_enter(EV_MREMAP, args->addr, args->new_len, args->old_len, args->flags, -1);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_mremap) { syscall_exit(args->ret); return 0; }

/* brk: addr is the requested break, ret the break after the call. */
TRACEPOINT_PROBE(syscalls, sys_enter_brk)
{
	syscall_enter(EV_BRK, args->brk, 0, 0, 0, -1);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_brk) { syscall_exit(args->ret); return 0; }

/* madvise: flags carries the advice. madvise(name, 0, MADV_NORMAL) is a
 * no-op for the kernel and is ramwatchd's phase mark: any program can make
 * it, with or without ramwatchd running. */
TRACEPOINT_PROBE(syscalls, sys_enter_madvise)
{
	if (args->len_in == 0 && args->behavior == 0) {
		if (!is_traced(current_tgid()))
			return 0;
		struct event *e = new_event(EV_MARK);
		if (!e)
			return 0;
		bpf_probe_read_user_str(e->name, sizeof(e->name), (void *)args->start);
		events.ringbuf_submit(e, 0);
		return 0;
	}
	if (args->len_in >= MIN_SYSCALL_BYTES)
		syscall_enter(EV_MADVISE, args->start, args->len_in, 0, args->behavior, -1);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_madvise) { syscall_exit(args->ret); return 0; }

/* shmat: fd carries the shmid, flags the shmflg; ret is the address. */
TRACEPOINT_PROBE(syscalls, sys_enter_shmat)
{
	syscall_enter(EV_SHMAT, (u64)args->shmaddr, 0, 0, args->shmflg, args->shmid);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_shmat) { syscall_exit(args->ret); return 0; }

TRACEPOINT_PROBE(syscalls, sys_enter_shmdt)
{
	syscall_enter(EV_SHMDT, (u64)args->shmaddr, 0, 0, 0, -1);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_shmdt) { syscall_exit(args->ret); return 0; }

/* memfd_create: the name is read from user memory; ret is the fd. */
TRACEPOINT_PROBE(syscalls, sys_enter_memfd_create)
{
	u64 id = bpf_get_current_pid_tgid();
	if (!is_traced(id >> 32))
		return 0;
	struct event e = {};
	e.kind = EV_MEMFD_CREATE;
	e.flags = args->flags;
	e.fd = -1;
	bpf_probe_read_user_str(e.name, sizeof(e.name), args->uname);
	u32 tid = (u32)id;
	if (inflight.update(&tid, &e))
		stat_inc(STAT_INFLIGHT_FULL);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_memfd_create) { syscall_exit(args->ret); return 0; }
#endif /* MM_SYSCALLS */

/* ---- Output lines: when a traced process wrote to stdout or stderr --------
 *
 * `ramwatchd run` turns the program's output lines into phases. It reads them
 * from a pipe, some ms after they were written; a call made in that gap would
 * be put in the wrong phase. So the kernel keeps the time and writer of the
 * last write to fd 1 or 2 by a traced process, and the reader takes them as
 * the line's own when it gets the line. No event: a chatty program would
 * flood the ring buffer. */
#ifdef OUTPUT_WRITES
BPF_ARRAY(last_output, struct output_write, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_write)
{
	if (args->fd != 1 && args->fd != 2)
		return 0;
	u32 tgid = current_tgid();
	if (!is_traced(tgid))
		return 0;
	u32 zero = 0;
	struct output_write *w = last_output.lookup(&zero);
	if (w) {
		w->ts_ns = bpf_ktime_get_ns();
		w->tgid = tgid;
	}
	return 0;
}
#endif

/* ---- Page faults: one in FAULT_SAMPLE_PERIOD, counted per region --------- */

static __always_inline void count_fault(u32 tgid, u64 addr)
{
	struct fault_key key = { .tgid = tgid, .region = addr >> FAULT_REGION_SHIFT };
	u64 zero = 0;
	u64 *n = fault_samples.lookup_or_try_init(&key, &zero);
	if (!n) {
		stat_inc(STAT_FAULT_REGIONS_FULL);
		return;
	}
	__sync_fetch_and_add(n, 1);
}

#ifdef FAULTS_FROM_PERF
/* Where exceptions:page_fault_user does not exist (arm64): the perf software
 * event samples for us, system-wide; this runs once per period. */
int on_fault_sample(struct bpf_perf_event_data *ctx)
{
	u32 tgid = current_tgid();
	if (is_traced(tgid))
		count_fault(tgid, ctx->addr);
	return 0;
}
#else
/* A raw tracepoint: (address, regs, error_code). Attached, even an empty
 * program costs ~32 ns a fault here (+2.5 % on a first-touch loop); a traced
 * process then pays only the slot lookup and one increment, and everything
 * else (the clock, the hash update, the ring buffer) once in
 * FAULT_SAMPLE_PERIOD faults. */
RAW_TRACEPOINT_PROBE(page_fault_user)
{
	u32 tgid = current_tgid();
	struct proc_state *st = traced_state(tgid);
	if (!st || ++st->faults % FAULT_SAMPLE_PERIOD)
		return 0;
	count_fault(tgid, ctx->args[0]);
#ifdef RSS_FROM_FAULTS
	st->changes += FAULT_SAMPLE_PERIOD;
	rss_moved(st);
#endif
	return 0;
}

#ifdef RSS_FROM_FAULTS
/* The kernel faulting in user pages for the process (read() into a buffer it
 * never touched, say) grows its RSS too. Rare, so cheap to watch. */
RAW_TRACEPOINT_PROBE(page_fault_kernel)
{
	struct proc_state *st = traced_state(current_tgid());
	if (st) {
		st->changes++;
		rss_moved(st);
	}
	return 0;
}
#endif
#endif

/* ---- Page cache filled by traced processes, per (device, inode) --------- */
#ifdef PAGE_CACHE_FILLS

TRACEPOINT_PROBE(filemap, mm_filemap_add_to_page_cache)
{
	if (!is_traced(current_tgid()))
		return 0;
	struct file_key key = { .dev = args->s_dev, .ino = args->i_ino };
	struct file_cache zero = {};
	struct file_cache *fc = files.lookup_or_try_init(&key, &zero);
	if (!fc) {
		stat_inc(STAT_FILES_FULL);
		return 0;
	}
	__sync_fetch_and_add(&fc->added, (u64)PAGE_BYTES << args->order);
	return 0;
}

/* Evictions happen in any context (kswapd, truncation): match on the file. */
TRACEPOINT_PROBE(filemap, mm_filemap_delete_from_page_cache)
{
	struct file_key key = { .dev = args->s_dev, .ino = args->i_ino };
	struct file_cache *fc = files.lookup(&key);
	if (fc)
		__sync_fetch_and_add(&fc->removed, (u64)PAGE_BYTES << args->order);
	return 0;
}
#endif /* PAGE_CACHE_FILLS */

/* ---- CUDA pinned host memory: uprobes on the driver library -------------
 *
 * Attached per libcuda file that a traced process maps (ramwatchd/probes.py).
 * Entry saves the arguments and the caller; return reports them with the
 * result, and for allocations the address the driver wrote to *pp. */
BPF_HASH(cuda_inflight, u32, struct cuda_call, 4096);

static __always_inline u64 caller_of(struct pt_regs *ctx)
{
#if defined(bpf_target_arm64)
	return ctx->regs[30];   /* the link register */
#else
	u64 ret = 0;            /* x86-64: at entry, the return address is at the stack top */
	bpf_probe_read_user(&ret, sizeof(ret), (void *)PT_REGS_SP(ctx));
	return ret;
#endif
}

static __always_inline int cuda_enter(struct pt_regs *ctx, u32 kind, u32 symbol,
				      u64 ptr, u64 size, u64 flags)
{
	u64 id = bpf_get_current_pid_tgid();
	if (!is_traced(id >> 32))
		return 0;
	struct cuda_call call = { .ptr = ptr, .size = size, .flags = flags,
				  .caller = caller_of(ctx), .kind = kind, .symbol = symbol,
				  .tgid = id >> 32 };
	u32 tid = (u32)id;
	if (cuda_inflight.update(&tid, &call))
		stat_inc(STAT_INFLIGHT_FULL);
	return 0;
}

int cuda_return(struct pt_regs *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct cuda_call *call = cuda_inflight.lookup(&tid);
	if (!call)
		return 0;
	struct event *e = new_event(call->kind);
	if (e) {
		e->ret = PT_REGS_RC(ctx);   /* CUresult: 0 is success */
		e->len = call->size;
		e->flags = call->flags;
		e->prot = call->caller;
		e->fd = call->symbol;
		e->addr = call->ptr;
		if (call->kind == EV_CUDA_ALLOC) {
			u64 allocated = 0;
			if (e->ret == 0)
				bpf_probe_read_user(&allocated, sizeof(allocated), (void *)call->ptr);
			e->addr = allocated;
		}
		events.ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	}
	cuda_inflight.delete(&tid);
	return 0;
}

int cuMemHostAlloc_enter(struct pt_regs *ctx)
{
	return cuda_enter(ctx, EV_CUDA_ALLOC, CU_MEM_HOST_ALLOC,
			  PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx));
}
int cuMemAllocHost_enter(struct pt_regs *ctx)
{
	return cuda_enter(ctx, EV_CUDA_ALLOC, CU_MEM_ALLOC_HOST, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0);
}
int cuMemAllocHost_v2_enter(struct pt_regs *ctx)
{
	return cuda_enter(ctx, EV_CUDA_ALLOC, CU_MEM_ALLOC_HOST_V2, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0);
}
int cuMemHostRegister_enter(struct pt_regs *ctx)
{
	return cuda_enter(ctx, EV_CUDA_REGISTER, CU_MEM_HOST_REGISTER,
			  PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx));
}
int cuMemHostRegister_v2_enter(struct pt_regs *ctx)
{
	return cuda_enter(ctx, EV_CUDA_REGISTER, CU_MEM_HOST_REGISTER_V2,
			  PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx));
}
int cuMemHostUnregister_enter(struct pt_regs *ctx)
{
	return cuda_enter(ctx, EV_CUDA_UNREGISTER, CU_MEM_HOST_UNREGISTER, PT_REGS_PARM1(ctx), 0, 0);
}
int cuMemFreeHost_enter(struct pt_regs *ctx)
{
	return cuda_enter(ctx, EV_CUDA_FREE, CU_MEM_FREE_HOST, PT_REGS_PARM1(ctx), 0, 0);
}

/* ---- The process tree: fork, exec, exit, OOM ---------------------------- */

/* task_newtask, not sched_process_fork: its clone_flags tell a new thread
 * (a server starts hundreds) from a new process, so threads cost nothing
 * here nor in user space. It fires before the child first runs, so none of
 * the child's faults go unseen. */
#define CLONE_THREAD_FLAG 0x00010000
TRACEPOINT_PROBE(task, task_newtask)
{
#ifdef FOLLOW_CHILDREN
	if (args->clone_flags & CLONE_THREAD_FLAG)
		return 0;
	if (!is_traced(current_tgid()))
		return 0;
	u32 child = args->pid;
	if (!claim_slot(child)) {
		struct proc_state fresh = { .tgid = child };
		u32 zero = 0, one = 1;
		if (traced.update(&child, &fresh)) {
			stat_inc(STAT_TRACED_FULL);
			return 0;
		}
		hash_used.update(&zero, &one);
	}
	struct event *e = new_event(EV_FORK);
	if (!e)
		return 0;
	e->ret = child;
	events.ringbuf_submit(e, 0);
#endif
	return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
	u32 tgid = current_tgid();
	struct proc_state *st = traced_state(tgid);
	if (!st)
		return 0;
	/* A new mm: its counters start from zero. */
	__builtin_memset(st->rss, 0, sizeof(st->rss));
	st->peak = st->last_step = 0;
	struct event *e = new_event(EV_EXEC);
	if (!e)
		return 0;
	e->ret = args->old_pid;
	TP_DATA_LOC_READ_STR(e->name, filename, sizeof(e->name));
	events.ringbuf_submit(e, 0);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
	u32 tgid = current_tgid();
	u32 tid = args->pid;
#ifdef HAVE_EXIT_GROUP_DEAD
	bool group_dead = args->group_dead;
#else
	bool group_dead = tid == tgid;
#endif
	cuda_inflight.delete(&tid);   /* a thread that dies inside the driver */
	if (!group_dead)
		return 0;
	struct proc_state *st = traced_state(tgid);
	if (!st)
		return 0;
	struct event *e = new_event(EV_EXIT);
	if (e) {
		/* The state is gone after this: send the peak along. */
		e->addr = st->peak;
		e->len = st->peak_ns;
		__builtin_memcpy(e->rss, st->peak_rss, sizeof(e->rss));
		events.ringbuf_submit(e, 0);
	}
	if (st->tgid == tgid)
		st->tgid = 0;   /* free the slot */
	else
		traced.delete(&tgid);
	return 0;
}

/* Always sent: an OOM kill anywhere on the node is worth knowing about.
 * rss holds the victim's counters in bytes; name its comm. */
TRACEPOINT_PROBE(oom, mark_victim)
{
	struct event *e = new_event(EV_OOM_VICTIM);
	if (!e)
		return 0;
	e->ret = args->pid;
	e->rss[RSS_FILE] = args->file_rss << 10;
	e->rss[RSS_ANON] = args->anon_rss << 10;
	e->rss[RSS_SHMEM] = args->shmem_rss << 10;
	TP_DATA_LOC_READ_STR(e->name, comm, sizeof(e->name));
	events.ringbuf_submit(e, 0);
	return 0;
}
