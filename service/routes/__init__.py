"""One router per resource: generate, jobs, architectures, files, health (and metrics)."""
