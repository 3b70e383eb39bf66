"""The node-wide daemon: `ramwatchd daemon`, serving Prometheus metrics."""
