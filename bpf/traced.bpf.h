/* Which processes are traced, their state, and the ring buffer every concern
 * sends its records on. */

/* The hot paths (one call per page fault) look in `slots` first: an array
 * indexed by tgid, whose lookup the verifier inlines, costs a few ns where a
 * hash lookup costs ~20 ns. Only a process whose slot another process holds
 * lives in `traced`; hash_used is set when that first happens, so until then
 * an untraced process's fault costs no hash lookup either. */
BPF_ARRAY(slots, struct proc_state, TRACED_SLOTS);
BPF_HASH(traced, u32, struct proc_state, 16384);
BPF_ARRAY(hash_used, u32, 1);
BPF_PERCPU_ARRAY(stats, u64, NR_STATS);
BPF_RINGBUF_OUTPUT(events, 1024);   /* pages: 4 MiB, ~40,000 records */

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

/* Trace tgid from now on, in its slot or else in the hash. Its first RSS
 * step waits RSS_STEP_NS like any other: a helper that forks, execs and exits
 * within that (a shell's `true`) costs user space no read at all. */
static __always_inline struct proc_state *start_tracing(u32 tgid)
{
	struct proc_state *st = claim_slot(tgid);
	if (!st) {
		struct proc_state fresh = { .tgid = tgid };
		if (traced.update(&tgid, &fresh)) {
			stat_inc(STAT_TRACED_FULL);
			return NULL;
		}
		u32 zero = 0, one = 1;
		hash_used.update(&zero, &one);
		st = traced.lookup(&tgid);
		if (!st)
			return NULL;
	}
	st->last_step_ns = bpf_ktime_get_ns();
	return st;
}

/* tgid's state if it is traced. */
static __always_inline struct proc_state *find_state(u32 tgid)
{
	if (!tgid)
		return NULL;   /* the idle task; 0 also marks a free slot */
	u32 slot = tgid & (TRACED_SLOTS - 1);
	struct proc_state *st = slots.lookup(&slot);
	if (st && st->tgid == tgid)
		return st;
	u32 zero = 0;
	u32 *used = hash_used.lookup(&zero);
	if (!used || !*used)
		return NULL;
	return traced.lookup(&tgid);
}

/* The state of the running process tgid if it is traced; under TRACE_ALL
 * every process is, from its first event on. */
static __always_inline struct proc_state *traced_state(u32 tgid)
{
	struct proc_state *st = find_state(tgid);
	if (!st && TRACE_ALL && tgid)
		return start_tracing(tgid);
	return st;
}

static __always_inline bool is_traced(u32 tgid)
{
	return traced_state(tgid) != NULL;
}

/* Stamp a record's head with the time and the running task. */
static __always_inline void fill_head(struct event_head *head, u32 kind)
{
	u64 id = bpf_get_current_pid_tgid();
	head->ts_ns = bpf_ktime_get_ns();
	head->tgid = id >> 32;
	head->tid = (u32)id;
	head->kind = kind;
	bpf_get_current_comm(head->comm, sizeof(head->comm));
}

/* Reserve a zeroed, stamped record of `size` bytes (a constant once inlined). */
static __always_inline void *new_event(u32 kind, u32 size)
{
	struct event_head *head = events.ringbuf_reserve(size);
	if (!head) {
		stat_inc(STAT_EVENTS_LOST);
		return NULL;
	}
	__builtin_memset(head, 0, size);
	fill_head(head, kind);
	return head;
}
