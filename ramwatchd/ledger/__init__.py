"""Stage 2, the ledger: the only reader of /proc. Per process and mapping, the
truth from smaps, classified (classes.py) and reconciled with VmRSS (look.py);
the RSS series between looks (rss.py); and the tracker (tracker.py) that owns
every process's life from the kernel's events."""
