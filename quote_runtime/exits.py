"""The exit codes a process stops with when it cannot start, the same for the service,
its workers and the publisher (`make run` passes them on)."""

from __future__ import annotations

# A bad setting or a bad command line (argparse's own code): the process names it in
# one line and stops before anything starts.
EXIT_SETTINGS = 2

# A reason found at start that a restart will not fix: Redis refused REDIS_URL (a wrong
# password, user or database, a command the ACL does not allow), or the service could
# not start serving (uvicorn uses the same for a failed lifespan startup). The
# supervisor gives up on a worker that exits with it.
EXIT_CONFIG = 3
