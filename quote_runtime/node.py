"""This process's node id: opaque, random, unique per worker process.

It goes into every client's `welcome` and every log line of the process, so operators and
tests can tell which worker a client landed on; being random, it reveals no host name,
address or PID.
"""

from __future__ import annotations

import secrets

NODE_ID = secrets.token_hex(6)
