"""Stage 1, the kernel side: compiles and attaches bpf/, and hands up typed
events (events.py) and the kernel's aggregates (probes.py). It knows nothing
of /proc nor of what the events mean for a process's memory."""
