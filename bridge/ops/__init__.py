"""Running the bridge: logs, metrics, loop and GC watch, systemd protocols, the scheduler,
health checks and the doctor; what an operator sees and the process's plumbing."""
