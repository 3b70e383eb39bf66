"""Stage 3, the drivers: they run the kernel side and the ledger for a purpose.
capture/ follows one process tree and keeps its timeline; daemon/ watches the
whole node, in groups, for Prometheus."""
