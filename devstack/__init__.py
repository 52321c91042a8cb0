"""Development and test tooling: the embedded stack (`make run`), the load generator, and what tests and
benchmarks start and stop. The runtime (`pipeline/`, `agents/`, `tables/`) never imports it; the CLI loads
its commands (`dev`, `produce`) by name, only when they run."""
