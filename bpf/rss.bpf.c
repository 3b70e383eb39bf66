/* ---- RSS: when a process's counters move ---------------------------------
 *
 * kmem:rss_stat fires once per counter change, about once per 4 KiB page
 * faulted. As a classic tracepoint it formats a record for every firing even
 * for an empty program: ~8 % on a first-touch fault loop here
 * (bench/fault_path.py). As a raw tracepoint it costs what any per-fault hook
 * does (~2.5 %), but passes only (mm, member): the sizes would need
 * mm_struct, which we never read. So by default the kernel only counts
 * changes and sends a step every RSS_STEP_CHANGES of them or RSS_STEP_NS, and
 * user space reads the exact counters from /proc/PID/status right then.
 *
 * A capture also traces the mm syscalls, which cover every other way a
 * process's own RSS moves (populate, munmap, madvise, brk), so there the page
 * faults themselves are the trigger (RSS_FROM_FAULTS, faults.bpf.c): one raw
 * tracepoint per fault instead of two. The daemon traces no syscalls and
 * counts rss_stat. EXACT_RSS keeps the exact per-member sizes and peaks in the
 * kernel instead, at the classic tracepoint's cost. */

#define RESIDENT_MEMBERS ((1 << RSS_FILE) | (1 << RSS_ANON) | (1 << RSS_SHMEM))

static __always_inline void send_rss_step(struct proc_state *st)
{
	struct rss_step_event *e = new_event(EV_RSS_STEP, sizeof(*e));
	if (!e)
		return;
	__builtin_memcpy(e->rss, st->rss, sizeof(e->rss));
	e->known = st->known;
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
	send_rss_step(st);
}

/* Written by user space only here, never into the state the probes update:
 * a read-modify-write of that state from user space loses the changes the
 * kernel made in between. */
BPF_HASH(rss_seeds, u32, struct rss_seed, 4096);

static __always_inline void take_seed(struct proc_state *st, u32 tgid)
{
	struct rss_seed *seed = rss_seeds.lookup(&tgid);
	if (!seed)
		return;
	for (int m = 0; m < NR_RSS_MEMBERS; m++) {
		if (!(st->known >> m & 1) && (seed->known >> m & 1)) {
			st->rss[m] = seed->rss[m];
			st->known |= 1 << m;
		}
	}
	rss_seeds.delete(&tgid);
}

/* EXACT_RSS. A member is known once the process's own rss_stat reported it:
 * a forked child's counters start as a copy the kernel made while the parent
 * ran (curr == 0, not counted here), and exec builds the new mm's first pages
 * the same way. Until every member is known, user space fills the others in
 * from /proc, and no peak is kept. */
TRACEPOINT_PROBE(kmem, rss_stat)
{
	/* curr == 0: another mm changed (fork, exec, teardown, reaping). */
	if (!args->curr)
		return 0;
	u32 tgid = current_tgid();
	struct proc_state *st = traced_state(tgid);
	if (!st)
		return 0;
	u32 member = args->member;
	if (member >= NR_RSS_MEMBERS)
		return 0;
	st->rss[member] = args->size;
	st->known |= 1 << member;
	if ((st->known & RESIDENT_MEMBERS) != RESIDENT_MEMBERS)
		take_seed(st, tgid);
	if (member == RSS_SWAP)
		return 0;

	u64 total = st->rss[RSS_FILE] + st->rss[RSS_ANON] + st->rss[RSS_SHMEM];
	if ((st->known & RESIDENT_MEMBERS) == RESIDENT_MEMBERS && total > st->peak) {
		st->peak = total;
		st->peak_ns = bpf_ktime_get_ns();
		__builtin_memcpy(st->peak_rss, st->rss, sizeof(st->rss));
	}
	s64 moved = total - st->last_step;
	if (moved < RSS_STEP_BYTES && moved > -RSS_STEP_BYTES)
		return 0;
	st->last_step = total;
	send_rss_step(st);
	return 0;
}

/* The daemon's trigger: count changes, no sizes. */
RAW_TRACEPOINT_PROBE(rss_stat)
{
	struct proc_state *st = traced_state(current_tgid());
	if (st && (++st->changes & 7) == 0)
		rss_moved(st);
	return 0;
}
