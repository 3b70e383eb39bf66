/* ---- The process tree: fork, exec, rename, exit, OOM -------------------- */

/* task_newtask, not sched_process_fork: its clone_flags tell a new thread
 * (a server starts hundreds) from a new process, so threads cost nothing
 * here nor in user space. It fires before the child first runs, so none of
 * the child's faults go unseen, and right after the kernel stamped the
 * child's start time: the boot clock now is that time, which user space
 * checks the child's /proc entry against. Attached when children are
 * followed. */
#define CLONE_THREAD_FLAG 0x00010000
TRACEPOINT_PROBE(task, task_newtask)
{
	if (args->clone_flags & CLONE_THREAD_FLAG)
		return 0;
	if (!find_state(current_tgid()))
		return 0;
	u32 child = args->pid;
	if (!start_tracing(child))
		return 0;
	if (STACKS)
		inherit_python(current_tgid(), child);
	struct fork_event *e = new_event(EV_FORK, sizeof(*e));
	if (!e)
		return 0;
	e->child = child;
	e->child_boot_ns = bpf_ktime_get_boot_ns();
	events.ringbuf_submit(e, 0);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
	struct proc_state *st = traced_state(current_tgid());
	if (!st)
		return 0;
	/* A new mm: its counters start over, and its first pages were counted
	 * while the old mm was current, so none is known yet. */
	__builtin_memset(st->rss, 0, sizeof(st->rss));
	st->known = st->peak = st->last_step = st->brk_sent = 0;
	st->last_step_ns = bpf_ktime_get_ns();
	if (STACKS) {
		u32 tgid = current_tgid();
		py_layouts.delete(&tgid);   /* the new program's Python is found again */
	}
	struct exec_event *e = new_event(EV_EXEC, sizeof(*e));
	if (!e)
		return 0;
	e->old_pid = args->old_pid;
	TP_DATA_LOC_READ_STR(e->filename, filename, sizeof(e->filename));
	events.ringbuf_submit(e, 0);
	return 0;
}

/* prctl(PR_SET_NAME) or a write to /proc/PID/comm. Only the main thread's
 * name is the process's: a thread renaming itself is skipped. Another
 * process renaming a task cannot be told from here to be renaming a thread,
 * so that is sent only for a task already traced, which is a main thread. */
TRACEPOINT_PROBE(task, task_rename)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id, renamed = args->pid;
	if (renamed == tid && tid != tgid)
		return 0;
	struct proc_state *st = renamed == tgid ? traced_state(tgid) : find_state(renamed);
	if (!st)
		return 0;
	struct rename_event *e = new_event(EV_RENAME, sizeof(*e));
	if (!e)
		return 0;
	e->renamed = renamed;
	__builtin_memcpy(e->newcomm, args->newcomm, sizeof(e->newcomm));
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
	struct proc_state *st = find_state(tgid);
	if (!st)
		return 0;
	struct exit_event *e = new_event(EV_EXIT, sizeof(*e));
	if (e) {
		/* The state is gone after this: send the peak along. */
		e->peak = st->peak;
		e->peak_ns = st->peak_ns;
		__builtin_memcpy(e->peak_rss, st->peak_rss, sizeof(e->peak_rss));
		events.ringbuf_submit(e, 0);
	}
	if (STACKS)
		py_layouts.delete(&tgid);
	if (st->tgid == tgid)
		st->tgid = 0;   /* free the slot */
	else
		traced.delete(&tgid);
	return 0;
}

/* Always sent: an OOM kill anywhere on the node is worth knowing about. */
TRACEPOINT_PROBE(oom, mark_victim)
{
	struct oom_victim_event *e = new_event(EV_OOM_VICTIM, sizeof(*e));
	if (!e)
		return 0;
	e->victim = args->pid;
	e->anon = args->anon_rss << 10;
	e->file = args->file_rss << 10;
	e->shmem = args->shmem_rss << 10;
	TP_DATA_LOC_READ_STR(e->victim_comm, comm, sizeof(e->victim_comm));
	events.ringbuf_submit(e, 0);
	return 0;
}
