/* The contract between ramwatchd's BPF programs and user space.
 *
 * Every ring-buffer record starts with struct event_head; its kind says which
 * payload struct the whole record is. ramwatchd/kernel/records.py mirrors
 * each struct field for field and decodes it into its own Python type:
 * change both sides together. The maps' other types reach user space through
 * bcc, which reads them from here. */
#ifndef RAMWATCHD_H
#define RAMWATCHD_H

enum event_kind {
	EV_MMAP = 1,
	EV_MUNMAP,
	EV_MREMAP,
	EV_BRK,
	EV_MADVISE,
	EV_SHMAT,
	EV_SHMDT,
	EV_MEMFD_CREATE,
	EV_FORK,
	EV_EXEC,
	EV_EXIT,
	EV_RENAME,
	EV_OOM_VICTIM,
	EV_RSS_STEP,
	EV_MARK,
	EV_CUDA_CALL,
	EV_OUTPUT,
	EV_STACK,
};

struct event_head {
	u64 ts_ns;              /* CLOCK_MONOTONIC */
	u32 tgid;               /* the process that was running */
	u32 tid;
	u32 kind;
	u32 pad;
	char comm[16];
};

/* ---- mm syscalls: arguments at enter, the result at exit ---------------- */

struct mmap_event {
	struct event_head head;
	u64 addr;               /* the hint; ret is where it went */
	u64 length;
	u64 prot;
	u64 flags;
	s64 fd;
	s64 ret;                /* address, or -errno */
};

struct munmap_event {
	struct event_head head;
	u64 addr;
	u64 length;
	s64 ret;
};

struct mremap_event {
	struct event_head head;
	u64 old_addr;
	u64 old_length;
	u64 new_length;
	u64 flags;
	s64 ret;                /* the new address, or -errno */
};

struct brk_event {
	struct event_head head;
	u64 requested;
	s64 ret;                /* the break after the call */
};

struct madvise_event {
	struct event_head head;
	u64 addr;
	u64 length;
	u64 advice;
	s64 ret;
};

struct shmat_event {
	struct event_head head;
	s64 shmid;
	u64 addr;
	u64 shmflg;
	s64 ret;                /* the address, or -errno */
};

struct shmdt_event {
	struct event_head head;
	u64 addr;
	s64 ret;
};

struct memfd_create_event {
	struct event_head head;
	u64 flags;
	s64 ret;                /* the fd, or -errno */
	char name[64];
};

/* One mm syscall between its enter and its exit, keyed by thread. */
union mm_call {
	struct event_head head;
	struct mmap_event mmap;
	struct munmap_event munmap;
	struct mremap_event mremap;
	struct brk_event brk;
	struct madvise_event madvise;
	struct shmat_event shmat;
	struct shmdt_event shmdt;
	struct memfd_create_event memfd_create;
};

/* ---- the process tree ---------------------------------------------------- */

struct fork_event {
	struct event_head head;     /* the parent */
	u32 child;
	u32 pad;
	u64 child_boot_ns;          /* CLOCK_BOOTTIME at the fork: the child's start time */
};

struct exec_event {
	struct event_head head;     /* comm is already the new program's */
	u32 old_pid;
	u32 pad;
	char filename[128];
};

struct exit_event {
	struct event_head head;
	u64 peak;                   /* EXACT_RSS: the highest file+anon+shmem seen, else 0 */
	u64 peak_ns;
	u64 peak_rss[4];            /* members at the peak */
};

/* task:task_rename: comm changed by prctl(PR_SET_NAME) or a write to
 * /proc/PID/comm, possibly by another process than the renamed one. */
struct rename_event {
	struct event_head head;     /* the task that did it */
	u32 renamed;                /* the renamed process (its main thread) */
	u32 pad;
	char newcomm[16];
};

struct oom_victim_event {
	struct event_head head;
	u32 victim;
	u32 pad;
	u64 anon;                   /* bytes */
	u64 file;
	u64 shmem;
	char victim_comm[16];
};

/* ---- RSS, marks, CUDA ---------------------------------------------------- */

/* rss_stat's member values (its format file names them), not taken from the
 * headers, which may be another kernel's. */
enum { RSS_FILE, RSS_ANON, RSS_SWAP, RSS_SHMEM, NR_RSS_MEMBERS };

/* --exact-rss: members read from /proc for a process whose own rss_stat has
 * not reported them yet; the kernel takes them at its next change. */
struct rss_seed {
	u64 rss[NR_RSS_MEMBERS];
	u64 known;               /* bit per member that rss[] holds */
};
#define RSS_ALL_KNOWN 0xf

/* A process's RSS moved. With EXACT_RSS, rss[] holds each member the kernel
 * has seen change since the process was traced (bit m of known); user space
 * reads the others, or all of them without EXACT_RSS, from /proc. */
struct rss_step_event {
	struct event_head head;
	u64 rss[NR_RSS_MEMBERS];    /* bytes */
	u32 known;
	u32 pad;
};

/* The start of a write to stdout or stderr by a traced process. */
#define OUTPUT_BYTES 512
struct output_event {
	struct event_head head;
	u32 fd;
	u32 pad;
	u64 length;             /* bytes written; data holds the first OUTPUT_BYTES */
	char data[OUTPUT_BYTES];
};

/* ---- stacks: the code behind a call or a fault ---------------------------- */

/* Where a process's CPython interpreter is and how its structs are laid out:
 * found by user space (ramwatchd/ledger/python.py), per process. Offsets are
 * bytes into the struct named; -1 where the version has no such field. The
 * frame_* ones are multiples of 8 below PY_FRAME_BYTES. */
struct py_layout {
	u64 runtime;                    /* the address of _PyRuntime */
	s32 runtime_interpreters_head;  /* -> the newest PyInterpreterState */
	s32 interp_threads_head;        /* -> its first PyThreadState */
	s32 tstate_next;
	s32 tstate_native_thread_id;
	s32 tstate_cframe;              /* 3.11, 3.12: -> _PyCFrame; -1 from 3.13 */
	s32 current_frame;              /* in the _PyCFrame, or (3.13+) the thread state */
	s32 frame_previous;
	s32 frame_code;
	s32 frame_instr;
};

#define PY_FRAMES 32
#define NATIVE_FRAMES 16                /* return addresses kept, innermost first */
#define PY_FRAME_WORDS 8
#define PY_FRAME_BYTES (8 * PY_FRAME_WORDS)
#define PY_THREADS 256

struct py_frame {
	u64 code;                       /* PyCodeObject * */
	u64 instr;                      /* the instruction it is at */
};

enum stack_status { STACK_OK, STACK_NO_PYTHON, STACK_NO_THREAD, STACK_UNREADABLE, STACK_DEEPER };

/* The stack of the thread that made the mm call sent next by that thread
 * (fault_addr 0), or that took a sampled page fault at fault_addr. */
struct stack_event {
	struct event_head head;
	u64 fault_addr;
	u32 native_depth;               /* return addresses in native[] */
	u32 depth;                      /* Python frames in frames[] */
	u32 status;                     /* enum stack_status */
	u32 pad;
	u64 native[NATIVE_FRAMES];
	struct py_frame frames[PY_FRAMES];
};

/* madvise(name, 0, MADV_NORMAL): a phase mark. */
struct mark_event {
	struct event_head head;
	char name[64];
};

enum cuda_call_kind { CUDA_ALLOC, CUDA_REGISTER, CUDA_UNREGISTER, CUDA_FREE };

/* The CUDA driver's host-memory entry points, in the order of
 * ramwatchd/kernel/cuda.py SYMBOLS. */
enum { CU_MEM_HOST_ALLOC, CU_MEM_ALLOC_HOST, CU_MEM_ALLOC_HOST_V2, CU_MEM_HOST_REGISTER,
       CU_MEM_HOST_REGISTER_V2, CU_MEM_HOST_UNREGISTER, CU_MEM_FREE_HOST };

struct cuda_call_event {
	struct event_head head;
	u64 addr;               /* allocations: what the driver wrote to *pp */
	u64 size;
	u64 flags;
	u64 caller;             /* the return address: which library called the driver */
	s64 result;             /* CUresult: 0 is success */
	u32 call;               /* enum cuda_call_kind */
	u32 symbol;
};

/* A CUDA call between its entry and its return. */
struct cuda_inflight {
	u64 ptr;                /* void **pp for allocations, the pointer otherwise */
	u64 size;
	u64 flags;
	u64 caller;
	u32 call;
	u32 symbol;
	u32 tgid;               /* user space holds back its looks at a process mid-allocation */
	u32 pad;
};

/* ---- state kept in the kernel -------------------------------------------- */

/* Per traced process, kept in the kernel and read by user space. */
struct proc_state {
	u64 tgid;                /* the owner of a slot; 0 when the slot is free.
				  * 64 bits: compare-and-swap claims a slot */
	u64 changes;             /* RSS counter changes since the last step */
	u64 last_step_ns;
	u64 faults;              /* page faults, for sampling one in FAULT_SAMPLE_PERIOD */
	u64 window_ns;           /* start of the current second of mm calls sent */
	u64 window_calls;        /* mm calls sent in it */
	u64 window_large_calls;  /* ... of LARGE_CALL_BYTES or more */
	u64 brk_sent;            /* the break at the last brk sent */
	u64 writes_window_ns;    /* the same for writes to stdout and stderr */
	u64 window_writes;
	/* EXACT_RSS only: */
	u64 rss[NR_RSS_MEMBERS]; /* last rss_stat value per member, bytes */
	u64 known;               /* bit per member set once rss[] holds its value */
	u64 peak;                /* highest file+anon+shmem seen with every member known */
	u64 peak_ns;
	u64 last_step;           /* total at the last step */
	u64 peak_rss[NR_RSS_MEMBERS];
};

struct file_key {
	u32 dev;
	u32 pad;
	u64 ino;
};

struct file_cache {
	u64 added;     /* bytes put in the page cache by traced processes */
	u64 removed;   /* bytes of those files dropped from it since */
	u32 named;     /* sent to files_named: it has grown past NAMED_FILE_BYTES */
	u32 pad;
};

struct fault_key {
	u32 tgid;
	u32 pad;
	u64 region;    /* fault address >> FAULT_REGION_SHIFT */
};

/* Per process: mm calls not sent one by one (too small, or past the rate). */
struct shed_calls {
	u64 calls;
	u64 bytes;
};

/* Indexes of the stats array: what the kernel side could not record. */
enum {
	STAT_EVENTS_LOST,       /* ring buffer full */
	STAT_TRACED_FULL,       /* a child could not be followed */
	STAT_FAULT_REGIONS_FULL,
	STAT_FILES_FULL,
	STAT_INFLIGHT_FULL,
	STAT_CALLS_SHED,        /* mm calls counted in the kernel, past the rate */
	NR_STATS,
};

#endif
