"""A capture of one process tree: `ramwatchd --pid PID` and `ramwatchd run -- CMD`."""
