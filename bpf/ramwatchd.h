/* Structs shared by every ramwatchd BPF program. struct event is mirrored in
 * ramwatchd/events.py (class Event): change both sides together. The maps'
 * other types reach user space through bcc, which reads them from here. */
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
	EV_OOM_VICTIM,
	EV_RSS_STEP,    /* a process's RSS moved: rss[] holds it (EXACT_RSS) or is
			 * zero, and user space reads the counters then */
	EV_MARK,        /* madvise(name, 0, MADV_NORMAL): a phase mark */
	EV_CUDA_ALLOC,      /* the CUDA driver allocated pinned host memory */
	EV_CUDA_REGISTER,   /* ... pinned memory the program already had */
	EV_CUDA_UNREGISTER,
	EV_CUDA_FREE,
};

/* The CUDA driver's host-memory entry points, in the order of
 * ramwatchd/probes.py CUDA_SYMBOLS; an event's fd holds the index. */
enum { CU_MEM_HOST_ALLOC, CU_MEM_ALLOC_HOST, CU_MEM_ALLOC_HOST_V2, CU_MEM_HOST_REGISTER,
       CU_MEM_HOST_REGISTER_V2, CU_MEM_HOST_UNREGISTER, CU_MEM_FREE_HOST };

/* A CUDA call between its entry and its return. */
struct cuda_call {
	u64 ptr;       /* void **pp for allocations, the pointer otherwise */
	u64 size;
	u64 flags;
	u64 caller;    /* return address: which library called the driver */
	u32 kind;
	u32 symbol;
	u32 tgid;      /* user space holds back its looks at a process mid-allocation */
	u32 pad;
};

/* rss_stat's member values (its format file names them), not taken from the
 * headers, which may be another kernel's. */
enum { RSS_FILE, RSS_ANON, RSS_SWAP, RSS_SHMEM, NR_RSS_MEMBERS };

/* One record on the ring buffer. Fields are named for mmap; other kinds
 * reuse them as events.py documents per kind. */
struct event {
	u64 ts_ns;              /* CLOCK_MONOTONIC */
	u32 tgid;
	u32 tid;
	u32 kind;
	s32 fd;
	u64 addr;
	u64 len;
	u64 prot;
	u64 flags;
	s64 ret;
	u64 rss[NR_RSS_MEMBERS]; /* bytes, per member, after the change */
	char comm[16];
	char name[64];
};

/* Per traced process, kept in the kernel and read by user space. */
struct proc_state {
	u64 tgid;                /* the owner of a slot; 0 when the slot is free.
				  * 64 bits: compare-and-swap claims a slot */
	u64 changes;             /* RSS counter changes since the last EV_RSS_STEP */
	u64 last_step_ns;
	u64 faults;              /* page faults, for sampling one in FAULT_SAMPLE_PERIOD */
	/* EXACT_RSS only: */
	u64 rss[NR_RSS_MEMBERS]; /* last rss_stat value per member, bytes */
	u64 peak;                /* highest file+anon+shmem seen */
	u64 peak_ns;
	u64 last_step;           /* total at the last EV_RSS_STEP */
	u64 peak_rss[NR_RSS_MEMBERS]; /* members at the peak */
};

/* The last write to stdout or stderr by a traced process (OUTPUT_WRITES). */
struct output_write {
	u64 ts_ns;
	u32 tgid;
	u32 pad;
};

struct file_key {
	u32 dev;
	u32 pad;
	u64 ino;
};

struct file_cache {
	u64 added;     /* bytes put in the page cache by traced processes */
	u64 removed;   /* bytes of those files dropped from it since */
};

struct fault_key {
	u32 tgid;
	u32 pad;
	u64 region;    /* fault address >> FAULT_REGION_SHIFT */
};

/* Indexes of the stats array: what the kernel side could not record. */
enum {
	STAT_EVENTS_LOST,       /* ring buffer full */
	STAT_TRACED_FULL,       /* a child could not be followed */
	STAT_FAULT_REGIONS_FULL,
	STAT_FILES_FULL,
	STAT_INFLIGHT_FULL,
	NR_STATS,
};

#endif
