/* ---- Page faults: one in FAULT_SAMPLE_PERIOD, counted per region --------- */

BPF_HASH(fault_samples, struct fault_key, u64, 65536);

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
	if (STACKS && (st->faults / FAULT_SAMPLE_PERIOD) % FAULT_STACK_PERIOD == 0)
		send_stack(ctx, ctx->args[0]);
	if (RSS_FROM_FAULTS) {
		st->changes += FAULT_SAMPLE_PERIOD;
		rss_moved(st);
	}
	return 0;
}

/* The kernel faulting in user pages for the process (read() into a buffer it
 * never touched, say) grows its RSS too. Rare, so cheap to watch. Attached
 * with RSS_FROM_FAULTS. */
RAW_TRACEPOINT_PROBE(page_fault_kernel)
{
	struct proc_state *st = traced_state(current_tgid());
	if (st) {
		st->changes++;
		rss_moved(st);
	}
	return 0;
}

/* Where exceptions:page_fault_user does not exist (arm64): the perf software
 * event samples for us, system-wide; this runs once per period. */
int on_fault_sample(struct bpf_perf_event_data *ctx)
{
	u32 tgid = current_tgid();
	struct proc_state *st = traced_state(tgid);
	if (!st)
		return 0;
	count_fault(tgid, ctx->addr);
	if (STACKS && ++st->faults % FAULT_STACK_PERIOD == 0)
		send_stack(ctx, ctx->addr);
	return 0;
}
