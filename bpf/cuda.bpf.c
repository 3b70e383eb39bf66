/* ---- CUDA pinned host memory: uprobes on the driver library -------------
 *
 * Attached per libcuda file that a traced process maps (ramwatchd/kernel).
 * Entry keeps the arguments and the caller; return sends them with the
 * result, and for allocations the address the driver wrote to *pp. */

BPF_HASH(cuda_inflight, u32, struct cuda_inflight, 4096);

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

static __always_inline int cuda_enter(struct pt_regs *ctx, u32 call, u32 symbol,
				      u64 ptr, u64 size, u64 flags)
{
	u64 id = bpf_get_current_pid_tgid();
	if (!is_traced(id >> 32))
		return 0;
	struct cuda_inflight entry = { .ptr = ptr, .size = size, .flags = flags,
				       .caller = caller_of(ctx), .call = call, .symbol = symbol,
				       .tgid = id >> 32 };
	u32 tid = (u32)id;
	if (cuda_inflight.update(&tid, &entry))
		stat_inc(STAT_INFLIGHT_FULL);
	return 0;
}

int cuda_return(struct pt_regs *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct cuda_inflight *entry = cuda_inflight.lookup(&tid);
	if (!entry)
		return 0;
	struct cuda_call_event *e = new_event(EV_CUDA_CALL, sizeof(*e));
	if (e) {
		e->result = PT_REGS_RC(ctx);
		e->size = entry->size;
		e->flags = entry->flags;
		e->caller = entry->caller;
		e->call = entry->call;
		e->symbol = entry->symbol;
		e->addr = entry->ptr;
		if (entry->call == CUDA_ALLOC) {
			u64 allocated = 0;
			if (e->result == 0)
				bpf_probe_read_user(&allocated, sizeof(allocated), (void *)entry->ptr);
			e->addr = allocated;
		}
		events.ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	}
	cuda_inflight.delete(&tid);
	return 0;
}

int cuMemHostAlloc_enter(struct pt_regs *ctx)
{
	return cuda_enter(ctx, CUDA_ALLOC, CU_MEM_HOST_ALLOC,
			  PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx));
}
int cuMemAllocHost_enter(struct pt_regs *ctx)
{
	return cuda_enter(ctx, CUDA_ALLOC, CU_MEM_ALLOC_HOST, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0);
}
int cuMemAllocHost_v2_enter(struct pt_regs *ctx)
{
	return cuda_enter(ctx, CUDA_ALLOC, CU_MEM_ALLOC_HOST_V2, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0);
}
int cuMemHostRegister_enter(struct pt_regs *ctx)
{
	return cuda_enter(ctx, CUDA_REGISTER, CU_MEM_HOST_REGISTER,
			  PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx));
}
int cuMemHostRegister_v2_enter(struct pt_regs *ctx)
{
	return cuda_enter(ctx, CUDA_REGISTER, CU_MEM_HOST_REGISTER_V2,
			  PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx));
}
int cuMemHostUnregister_enter(struct pt_regs *ctx)
{
	return cuda_enter(ctx, CUDA_UNREGISTER, CU_MEM_HOST_UNREGISTER, PT_REGS_PARM1(ctx), 0, 0);
}
int cuMemFreeHost_enter(struct pt_regs *ctx)
{
	return cuda_enter(ctx, CUDA_FREE, CU_MEM_FREE_HOST, PT_REGS_PARM1(ctx), 0, 0);
}
