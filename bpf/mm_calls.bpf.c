/* ---- mm syscalls: arguments at enter, the result at exit -----------------
 *
 * A call is kept (by thread) from its enter to its exit and sent as one
 * record. Calls smaller than MIN_SYSCALL_BYTES are not sent. A process sends
 * at most MAX_CALLS_PER_S calls a second (and as many of LARGE_CALL_BYTES or
 * more): past that rate user space could not follow them one by one, so the
 * rest are counted here, per process, in `shed`, and user space reports the
 * totals. */

BPF_HASH(inflight, u32, union mm_call, 4096);
BPF_HASH(shed, u32, struct shed_calls, 16384);

/* Large calls (a KV cache, a weights file) have a budget of their own: a
 * flood of small ones never hides them. */
static __always_inline bool within_rate(struct proc_state *st, u64 bytes)
{
	u64 now = bpf_ktime_get_ns();
	if (now - st->window_ns >= 1000000000ULL) {
		st->window_ns = now;
		st->window_calls = st->window_large_calls = 0;
	}
	if (bytes >= LARGE_CALL_BYTES)
		return st->window_large_calls++ < MAX_CALLS_PER_S;
	return st->window_calls++ < MAX_CALLS_PER_S;
}

static __always_inline void shed_call(u32 tgid, u64 bytes)
{
	struct shed_calls zero = {};
	struct shed_calls *s = shed.lookup_or_try_init(&tgid, &zero);
	if (s) {
		__sync_fetch_and_add(&s->calls, 1);
		__sync_fetch_and_add(&s->bytes, bytes);
	}
	stat_inc(STAT_CALLS_SHED);
}

/* The running process's state, if it is traced. */
static __always_inline struct proc_state *caller_state(void)
{
	return traced_state(current_tgid());
}

/* Keep a call of `bytes` until its exit, within the process's rate. */
static __always_inline void keep_call(struct proc_state *st, union mm_call *call, u32 kind, u64 bytes)
{
	if (!within_rate(st, bytes)) {
		shed_call(st->tgid, bytes);
		return;
	}
	fill_head(&call->head, kind);
	u32 tid = call->head.tid;
	if (inflight.update(&tid, call))
		stat_inc(STAT_INFLIGHT_FULL);
}

static __always_inline void send(void *record, u32 size)
{
	if (events.ringbuf_output(record, size, BPF_RB_FORCE_WAKEUP))
		stat_inc(STAT_EVENTS_LOST);
}

/* malloc moves the break in small steps, thousands a second while a program
 * starts: brk is sent only once the break moved MIN_SYSCALL_BYTES since the
 * last one sent, as the other calls are sent only from that size. Returns
 * how far it moved since then, 0 if not that far. */
static __always_inline u64 brk_moved(u32 tgid, s64 brk)
{
	struct proc_state *st = find_state(tgid);
	if (!st)
		return 0;
	s64 moved = brk - (s64)st->brk_sent;
	if (moved < 0)
		moved = -moved;
	if (st->brk_sent && moved < MIN_SYSCALL_BYTES)
		return 0;
	st->brk_sent = brk;
	return moved ? moved : 1;
}

/* The calls whose stack says who made memory (not those that only free it),
 * and their size: what they may have made. */
static __always_inline u64 bytes_made(union mm_call *call, u64 brk_moved)
{
	switch (call->head.kind) {
	case EV_MMAP:
		return call->mmap.length;
	case EV_MREMAP:
		return call->mremap.new_length;
	case EV_BRK:
		return brk_moved;
	case EV_SHMAT:
		return STACK_SAMPLE_BYTES;     /* its size is the segment's: not known here */
	}
	return 0;
}

/* Reading a stack costs user space far more than the call: a program that
 * starts makes thousands of 1 MiB calls (malloc's arenas, the heap). As heap
 * profilers do, calls under STACK_SAMPLE_BYTES get theirs with the chance
 * bytes / STACK_SAMPLE_BYTES: one stack for each STACK_SAMPLE_BYTES they
 * make, on average, each standing for that many bytes. */
static __always_inline bool stack_sampled(u64 bytes)
{
	return bytes >= STACK_SAMPLE_BYTES || bpf_get_prandom_u32() % STACK_SAMPLE_BYTES < bytes;
}

/* Complete the thread's kept call with its result and send it, timed at
 * the exit: the moment the mapping exists (or is gone). */
static __always_inline void call_exit(void *ctx, s64 ret)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	union mm_call *call = inflight.lookup(&tid);
	if (!call)
		return;
	u64 moved = call->head.kind == EV_BRK ? brk_moved(call->head.tgid, ret) : 0;
	if (call->head.kind == EV_BRK && !moved) {
		inflight.delete(&tid);
		return;
	}
	u64 bytes = bytes_made(call, moved);
	if (STACKS && bytes && stack_sampled(bytes))
		send_stack(ctx, 0);     /* just before the call: user space pairs them by thread */
	call->head.ts_ns = bpf_ktime_get_ns();
	switch (call->head.kind) {
	case EV_MMAP:
		call->mmap.ret = ret;
		send(call, sizeof(call->mmap));
		break;
	case EV_MUNMAP:
		call->munmap.ret = ret;
		send(call, sizeof(call->munmap));
		break;
	case EV_MREMAP:
		call->mremap.ret = ret;
		send(call, sizeof(call->mremap));
		break;
	case EV_BRK:
		call->brk.ret = ret;
		send(call, sizeof(call->brk));
		break;
	case EV_MADVISE:
		call->madvise.ret = ret;
		send(call, sizeof(call->madvise));
		break;
	case EV_SHMAT:
		call->shmat.ret = ret;
		send(call, sizeof(call->shmat));
		break;
	case EV_SHMDT:
		call->shmdt.ret = ret;
		send(call, sizeof(call->shmdt));
		break;
	case EV_MEMFD_CREATE:
		call->memfd_create.ret = ret;
		send(call, sizeof(call->memfd_create));
		break;
	}
	inflight.delete(&tid);
}

TRACEPOINT_PROBE(syscalls, sys_enter_mmap)
{
	struct proc_state *st;
	if (args->len < MIN_SYSCALL_BYTES || !(st = caller_state()))
		return 0;
	union mm_call call = {};
	call.mmap.addr = args->addr;
	call.mmap.length = args->len;
	call.mmap.prot = args->prot;
	call.mmap.flags = args->flags;
	call.mmap.fd = (s32)args->fd;
	keep_call(st, &call, EV_MMAP, args->len);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_mmap) { call_exit(args, args->ret); return 0; }

TRACEPOINT_PROBE(syscalls, sys_enter_munmap)
{
	struct proc_state *st;
	if (args->len < MIN_SYSCALL_BYTES || !(st = caller_state()))
		return 0;
	union mm_call call = {};
	call.munmap.addr = args->addr;
	call.munmap.length = args->len;
	keep_call(st, &call, EV_MUNMAP, args->len);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_munmap) { call_exit(args, args->ret); return 0; }

TRACEPOINT_PROBE(syscalls, sys_enter_mremap)
{
	struct proc_state *st;
	if ((args->old_len < MIN_SYSCALL_BYTES && args->new_len < MIN_SYSCALL_BYTES) || !(st = caller_state()))
		return 0;
	union mm_call call = {};
	call.mremap.old_addr = args->addr;
	call.mremap.old_length = args->old_len;
	call.mremap.new_length = args->new_len;
	call.mremap.flags = args->flags;
	keep_call(st, &call, EV_MREMAP, args->new_len);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_mremap) { call_exit(args, args->ret); return 0; }

TRACEPOINT_PROBE(syscalls, sys_enter_brk)
{
	struct proc_state *st = caller_state();
	if (!st)
		return 0;
	union mm_call call = {};
	call.brk.requested = args->brk;
	keep_call(st, &call, EV_BRK, 0);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_brk) { call_exit(args, args->ret); return 0; }

/* madvise(name, 0, MADV_NORMAL) is a no-op for the kernel and ramwatchd's
 * phase mark: any program can make it, with or without ramwatchd running. */
static __always_inline void send_mark(struct proc_state *st, const char *name)
{
	if (!within_rate(st, 0))
		return;
	struct mark_event *e = new_event(EV_MARK, sizeof(*e));
	if (!e)
		return;
	bpf_probe_read_user_str(e->name, sizeof(e->name), name);
	events.ringbuf_submit(e, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_madvise)
{
	if (args->len_in == 0 && args->behavior == 0) {
		struct proc_state *st = caller_state();
		if (st)
			send_mark(st, (const char *)args->start);
		return 0;
	}
	struct proc_state *st;
	if (args->len_in < MIN_SYSCALL_BYTES || !(st = caller_state()))
		return 0;
	union mm_call call = {};
	call.madvise.addr = args->start;
	call.madvise.length = args->len_in;
	call.madvise.advice = args->behavior;
	keep_call(st, &call, EV_MADVISE, args->len_in);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_madvise) { call_exit(args, args->ret); return 0; }

TRACEPOINT_PROBE(syscalls, sys_enter_shmat)
{
	struct proc_state *st = caller_state();
	if (!st)
		return 0;
	union mm_call call = {};
	call.shmat.shmid = args->shmid;
	call.shmat.addr = (u64)args->shmaddr;
	call.shmat.shmflg = args->shmflg;
	keep_call(st, &call, EV_SHMAT, 0);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_shmat) { call_exit(args, args->ret); return 0; }

TRACEPOINT_PROBE(syscalls, sys_enter_shmdt)
{
	struct proc_state *st = caller_state();
	if (!st)
		return 0;
	union mm_call call = {};
	call.shmdt.addr = (u64)args->shmaddr;
	keep_call(st, &call, EV_SHMDT, 0);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_shmdt) { call_exit(args, args->ret); return 0; }

TRACEPOINT_PROBE(syscalls, sys_enter_memfd_create)
{
	struct proc_state *st = caller_state();
	if (!st)
		return 0;
	union mm_call call = {};
	call.memfd_create.flags = args->flags;
	bpf_probe_read_user_str(call.memfd_create.name, sizeof(call.memfd_create.name), args->uname);
	keep_call(st, &call, EV_MEMFD_CREATE, 0);
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_memfd_create) { call_exit(args, args->ret); return 0; }
