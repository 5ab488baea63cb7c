"""``deft-node --config node1.toml``: run one DEFT node (supervisor and its processes).

Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 2 for a configuration
error (the message names file, key and problem), 1 for other start failures.
"""

from __future__ import annotations

import argparse
import sys

from deft.runtime.config import load_config
from deft.runtime.security import load_keys
from deft.runtime.errors import DeftError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deft-node", description="Run one DEFT node.")
    parser.add_argument("--config", required=True, help="node TOML file (see examples/node1.toml)")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        keys = load_keys(config.keys, config.node.id) if config.keys else None
    except DeftError as exc:
        print(f"deft-node: error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.config}: ok")
        return 0
    from deft.runtime.procs.common import StopFlag, boost_priority, setup_logging
    from deft.runtime.node.supervisor import Supervisor

    from deft.runtime.sockets import use_keys

    use_keys(keys)   # every socket of this process speaks CURVE from now on (its children load them too)
    log = setup_logging(f"node[{config.node.id}]")
    boost_priority()
    stop = StopFlag()
    try:
        Supervisor(config, args.config, stop, log).run()
    except DeftError as exc:
        log.error("%s", exc)
        return 1
    return 0
