"""A worker process of --workers: a whole server on the shared ports, started and watched by the supervisor.

Its Config, its number and the supervisor's pid come on stdin; once it serves, its private endpoints' ports go
back on stdout.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import pickle
import signal
import sys

import uvloop

from globaldns import cli, logs
from globaldns.server import Server

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def main() -> int:
    config, index, supervisor = pickle.load(sys.stdin.buffer)
    _die_with(supervisor)
    logs.setup(config.log_level, config.log_format, index)
    return cli.run(lambda: uvloop.run(_serve(Server(config, reuse_port=True))))


def _die_with(supervisor: int) -> None:
    """Have the kernel SIGKILL this process when the supervisor dies, however it dies, so that no worker is left
    holding the ports. Set here, after exec: exec of an interpreter with file capabilities (the image's) clears it.
    It fires when the thread that started this process ends: the supervisor's loop, in its main thread."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != supervisor:  # it died before the prctl
        raise SystemExit(1)


async def _serve(server: Server) -> int:
    """Serve; once every listener and endpoint is bound, tell the supervisor where the private endpoints are."""

    def report(started: asyncio.Task) -> None:
        if not started.cancelled():
            sys.stdout.write(json.dumps(server.http_ports) + "\n")
            sys.stdout.flush()
            os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # anything printed later goes to the log, not the pipe

    started = asyncio.create_task(server.started.wait())
    started.add_done_callback(report)
    try:
        return await server.serve()
    finally:
        started.cancel()


if __name__ == "__main__":
    raise SystemExit(main())
