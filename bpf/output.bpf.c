/* ---- Output: what traced processes write to stdout and stderr ------------
 *
 * A capture names its phases after the lines a program prints. The kernel
 * sends the start of each write to fd 1 or 2 with its time and its writer, so
 * user space rebuilds each process's own lines, timed to the write: however
 * many processes share the pipe or terminal, and whether ramwatchd started
 * the program or attached to it. A process sends at most MAX_WRITES_PER_S a
 * second: a progress bar redrawn a thousand times a second is not a phase. */

static __always_inline bool writes_within_rate(struct proc_state *st)
{
	u64 now = bpf_ktime_get_ns();
	if (now - st->writes_window_ns >= 1000000000ULL) {
		st->writes_window_ns = now;
		st->window_writes = 0;
	}
	return st->window_writes++ < MAX_WRITES_PER_S;
}

TRACEPOINT_PROBE(syscalls, sys_enter_write)
{
	if (args->fd != 1 && args->fd != 2)
		return 0;
	struct proc_state *st = find_state(current_tgid());
	if (!st || !writes_within_rate(st))
		return 0;
	struct output_event *e = new_event(EV_OUTPUT, sizeof(*e));
	if (!e)
		return 0;
	e->fd = args->fd;
	e->length = args->count;
	u64 n = args->count;
	if (n > OUTPUT_BYTES)   /* a bound the verifier follows without CAP_SYSLOG's probe_read_user */
		n = OUTPUT_BYTES;
	bpf_probe_read_user(e->data, n, args->buf);
	events.ringbuf_submit(e, 0);
	return 0;
}
