/* ---- Output lines: when a traced process wrote to stdout or stderr --------
 *
 * `ramwatchd run` turns the program's output lines into phases. It reads them
 * from a pipe, some ms after they were written; a call made in that gap would
 * be put in the wrong phase. So the kernel keeps the time and writer of the
 * last write to fd 1 or 2 by a traced process, and the reader takes them as
 * the line's own when it gets the line. No event: a chatty program would
 * flood the ring buffer. */

BPF_ARRAY(last_output, struct output_write, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_write)
{
	if (args->fd != 1 && args->fd != 2)
		return 0;
	u32 tgid = current_tgid();
	if (!find_state(tgid))
		return 0;
	u32 zero = 0;
	struct output_write *w = last_output.lookup(&zero);
	if (w) {
		w->ts_ns = bpf_ktime_get_ns();
		w->tgid = tgid;
	}
	return 0;
}
