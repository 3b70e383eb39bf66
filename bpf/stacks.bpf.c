/* ---- Stacks: the code behind a call or a fault -----------------------------
 *
 * For each mm call sent to user space, and for one sampled fault in
 * FAULT_STACK_PERIOD, the calling thread's stacks: the native one from its
 * frame pointers, and the Python one read from the interpreter's own memory,
 * as py-spy reads it from outside. The thread's PyThreadState is found by
 * walking the newest interpreter's thread list (the only one, but for
 * programs with subinterpreters) for its native thread id, then kept: no
 * TLS, no kernel struct. Each frame is kept as (code object, instruction); user
 * space reads the file, function and line from the code object. */

BPF_HASH(py_layouts, u32, struct py_layout, 4096);
/* tid -> its PyThreadState, found once: a server has hundreds of threads. */
BPF_TABLE("lru_hash", u32, u64, py_threads, 16384);

static __always_inline u64 read_u64(u64 addr)
{
	u64 value = 0;
	if (bpf_probe_read_user(&value, sizeof(value), (void *)addr))
		return 0;
	return value;
}

static __always_inline u64 thread_state(struct py_layout *l, u32 tid)
{
	u64 *known = py_threads.lookup(&tid);
	if (known && read_u64(*known + l->tstate_native_thread_id) == tid)
		return *known;
	u64 interp = read_u64(l->runtime + l->runtime_interpreters_head);
	u64 tstate = interp ? read_u64(interp + l->interp_threads_head) : 0;
	u64 found = 0;
	for (int i = 0; i < PY_THREADS; i++) {
		if (!tstate || found)
			break;
		if (read_u64(tstate + l->tstate_native_thread_id) == tid)
			found = tstate;
		tstate = read_u64(tstate + l->tstate_next);
	}
	if (found)
		py_threads.update(&tid, &found);
	return found;
}

/* A forked child is a copy of its parent's memory, interpreter included:
 * set here, its first calls (often right after the fork) have stacks. */
static __always_inline void inherit_python(u32 parent, u32 child)
{
	struct py_layout *l = py_layouts.lookup(&parent);
	if (l)
		py_layouts.update(&child, l);
}

/* Every frame is kept, marker frames too (3.12+'s C-stack entries, whose code
 * is the interpreter's trampoline): a branch per frame would make the
 * verifier follow 2^32 paths. User space drops them by their name. A frame's
 * fields all lie in its first PY_FRAME_BYTES: one read a frame, not three. */
static __always_inline u32 walk_python(struct py_layout *l, u32 tid, struct stack_event *e)
{
	u64 tstate = thread_state(l, tid);
	if (!tstate)
		return STACK_NO_THREAD;
	u64 holder = l->tstate_cframe >= 0 ? read_u64(tstate + l->tstate_cframe) : tstate;
	u64 frame = holder ? read_u64(holder + l->current_frame) : 0;
	u32 code = (l->frame_code >> 3) & (PY_FRAME_WORDS - 1);
	u32 instr = (l->frame_instr >> 3) & (PY_FRAME_WORDS - 1);
	u32 previous = (l->frame_previous >> 3) & (PY_FRAME_WORDS - 1);
	for (int i = 0; i < PY_FRAMES; i++) {
		if (!frame)
			return STACK_OK;
		u64 words[PY_FRAME_WORDS];
		if (bpf_probe_read_user(words, sizeof(words), (void *)frame))
			return STACK_UNREADABLE;
		e->frames[i].code = words[code];
		e->frames[i].instr = words[instr];
		e->depth = i + 1;
		frame = words[previous];
	}
	return frame ? STACK_DEEPER : STACK_OK;
}

/* Send the running thread's stacks; ctx: the program's own context. */
static __always_inline void send_stack(void *ctx, u64 fault_addr)
{
	struct stack_event *e = new_event(EV_STACK, sizeof(*e));
	if (!e)
		return;
	e->fault_addr = fault_addr;
	/* In the record itself: a stack map would cost user space a lookup per stack. */
	long copied = bpf_get_stack(ctx, e->native, sizeof(e->native), BPF_F_USER_STACK);
	e->native_depth = copied > 0 ? copied / sizeof(u64) : 0;
	struct py_layout *l = py_layouts.lookup(&e->head.tgid);
	e->status = l ? walk_python(l, e->head.tid, e) : STACK_NO_PYTHON;
	events.ringbuf_submit(e, 0);
}
