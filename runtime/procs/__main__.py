"""Entry point of a node process: ``python -m deft.runtime.procs ROLE --config PATH --index N``."""

from __future__ import annotations

import argparse
import os
import sys

from deft.runtime.config import load_config
from deft.runtime.errors import DeftError
from deft.runtime.procs.common import StopFlag, die_with_parent, normal_priority, setup_logging
from deft.runtime.topology import Topology

ROLES = ("io", "worker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deft-proc")
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--restarted", action="store_true", help="started again after a crash")
    parser.add_argument("--standby", action="store_true", help="wait, ready, until told to take over")
    parser.add_argument("--socket-fd", type=int, help="io: the supervisor's bound ingress UDP socket")
    args = parser.parse_args(argv)
    die_with_parent()
    normal_priority()
    stop = StopFlag()
    log = setup_logging(f"{args.role}{args.index if args.role == 'worker' else ''}")
    try:
        config = load_config(args.config)
        if config.keys:
            from deft.runtime.security import load_keys
            from deft.runtime.sockets import use_keys

            use_keys(load_keys(config.keys, config.node.id))
        topo = Topology(config)
        extra = {"socket_fd": args.socket_fd} if args.role == "io" else {}
        if args.role == "io":
            from deft.runtime.procs.io import run
        else:
            from deft.runtime.worker.worker import run
        if args.standby:
            from deft.runtime.procs.standby import wait_for_takeover

            log.info("standby waiting")
            if not wait_for_takeover(topo, args.role, args.index, stop):
                return 0
        profile_dir = os.environ.get("DEFT_PROFILE")   # diagnostics: cProfile each process into this folder
        if profile_dir:
            import cProfile

            import time

            profiler = cProfile.Profile(time.thread_time)   # CPU of this thread, not wall time
            try:
                profiler.runcall(run, topo, args.index, stop, log, restarted=args.restarted or args.standby, **extra)
            finally:
                profiler.dump_stats(os.path.join(profile_dir, f"{topo.node_id}.{args.role}{args.index}.{os.getpid()}.prof"))
        else:
            run(topo, args.index, stop, log, restarted=args.restarted or args.standby, **extra)
    except DeftError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
