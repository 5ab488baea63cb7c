"""deft-ctl: talk to a node's or the controller's control endpoint.

Synopsis::

    deft-ctl --node tcp://127.0.0.1:7101 status [--json]
    deft-ctl --controller tcp://127.0.0.1:7000 status [--json]     # either controller; a standby says
                                                                    # which one is active and forwards the rest
    deft-ctl --controller tcp://127.0.0.1:7000 fail nf node1/nf0      # drills: SIGKILL an NF worker
    deft-ctl --controller tcp://127.0.0.1:7000 fail node node1        # ... or a whole node
    deft-ctl --controller tcp://127.0.0.1:7000 rebalance [--wait]     # spread pairs over the live nodes
    deft-ctl --controller tcp://127.0.0.1:7000 drain node2 [--wait]   # move every role off node2
    deft-ctl --controller tcp://127.0.0.1:7000 undrain node2          # let it take roles again
    deft-ctl --controller tcp://127.0.0.1:7000 move --buckets 100-199 --to-pair 3 [--wait]   # flows move
    deft-ctl --node tcp://127.0.0.1:7101 global get KEY [--linearizable] [--json]
    deft-ctl keys init examples/cluster-secure/keys [--members node1,...]   # a secure cluster's CURVE keys
    deft-ctl --keys examples/cluster-secure/keys --controller tcp://127.0.0.1:7000 status   # ... used
    deft-ctl --node tcp://127.0.0.1:7101 global incr KEY [N]     # also: put KEY JSON, add_to_set KEY JSON

``status`` shows the node id, the pid of the supervisor and of every process,
per-instance counters (received, processed, released, pending, drops by
reason), ring occupancy and the ingress drop counters by reason. ``--json``
prints the raw reply for scripts. Exit code 1 when the node does not answer
within ``--timeout-ms``.
"""

from __future__ import annotations

import argparse
import sys
import time

import orjson

from deft.runtime.errors import DeftError
from deft.runtime.security import DEFAULT_MEMBERS, OPERATOR, init_keys, load_keys
from deft.runtime.sockets import use_keys

# the control client lives with the control server (the controller uses it too); re-exported here
from deft.runtime.control import NoAnswer as NoAnswer
from deft.runtime.control import query as query
from deft.runtime.control import query_all as query_all


def _fmt_counters(counters: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in counters.items() if v)


def render_status(st: dict) -> str:
    node = st["node"]
    lines = [f"node {node['id']}  supervisor pid {node['pid']}  up {node['uptime_s']:.1f}s  control {node['control']}"]
    ing = st["ingress"]
    if ing is None:
        lines.append("ingress none: this node gets its packets from other nodes")
    else:
        lines.append(f"ingress {ing['listen']}  pid {ing['pid']}  {_fmt_counters(ing['counters'])}")
        drops = {k: v for k, v in ing["drops"].items() if v}
        lines.append(f"  ingress drops: {_fmt_counters(drops) if drops else 'none'}")
        for ring in ing["unit_rings"]:
            lines.append(f"  ring {ring['name']}: {ring['occupancy']}/{ring['slots']}")
    raft = st.get("raft")
    if raft:
        lines.append(f"raft member {raft['id']}  {raft['role']}  term {raft['term']}  leader {raft['leader']}  "
                     f"commit {raft['commit']}  applied {raft['applied']}  snapshot {raft.get('snapshot', 0)}  "
                     f"digest {raft['digest']}")
        if "voters" in raft:
            progress = raft.get("progress") or {}
            lines.append("  members: " + "  ".join(
                f"{m} {'voter' if int(m) in raft['voters'] else 'learner' if int(m) in raft['learners'] else 'gone'}"
                + (f" (match {progress[m]})" if m in progress else "") for m in raft["members"]))
    io = st.get("io")
    if io:
        lines.append(f"io  pid {io['pid']}  restarts {io['restarts']}  {_fmt_counters(io['counters'])}")
    for u in st["units"]:
        lines.append(f"unit {u['index']}  pid {u['pid']}  restarts {u['restarts']}  {_fmt_counters(u['counters'])}")
    for inst in st["instances"]:
        state = "up" if inst["alive"] else "DOWN"
        roles = f"primary of {inst['primary_of_pairs']}  secondary of {inst['secondary_of_pairs']}"
        lines.append(f"instance {inst['id']} ({inst['kind']}, {inst['role']})  pid {inst['pid']} {state}  "
                     f"restarts {inst['restarts']}  buckets {inst['buckets']}  {roles}")
        lines.append(f"  {_fmt_counters(inst['counters'])}")
        if inst["nf_counters"]:
            lines.append(f"  nf: {_fmt_counters(inst['nf_counters'])}")
        rings = ", ".join(f"{r['occupancy']}/{r['slots']}" for r in inst["input_rings"])
        lines.append(f"  input rings {rings}  egress ring {inst['egress_ring']['occupancy']}/{inst['egress_ring']['slots']}")
    eg = st["egress"]
    lines.append(f"egress {eg['send_to']}  pid {eg['pid']}  {_fmt_counters(eg['counters'])}")
    return "\n".join(lines)


def render_cluster(st: dict) -> str:
    c = st["controller"]
    lines = [f"controller {c['id']}  pid {c['pid']}  up {c['uptime_s']:.1f}s  heartbeat {c['heartbeat_ms']} ms x "
             f"{c['miss_limit']}  {_fmt_counters(c['counters'])}"]
    if c["role"] == "active":
        since = time.strftime("%H:%M:%S", time.localtime(c["active_since"]))
        lines.append(f"  ACTIVE since {since} ({time.time() - c['active_since']:.1f} s), lease term {c['term']}, "
                     f"{c['lease']['granted']} of {c['lease']['voters']} voters")
    else:
        active = c["active"]
        lines.append(f"  STANDBY: the active controller is {active['holder'] or 'unknown'}"
                     + (f" at {active['control']}" if active["control"] else "") + f" (term {c['term']} asked)")
    for node in st["nodes"]:
        lines.append(f"node {node['id']}  pid {node['pid']}  {node['state'].upper()}  control {node['control']}  "
                     f"last beat {node['silence_ms']:.0f} ms ago")
    for inst in st["instances"]:
        peer = f"  secondary {inst['peer']}" if inst["peer"] else ""
        if inst.get("secondary_of"):
            peer += f"  (secondary of {inst['secondary_of']})"
        lag = f"  lag {inst['replication_lag']}" if inst.get("replication_lag") else ""
        lines.append(f"  instance {inst['id']}  {inst['role']}{peer}  pid {inst['pid']}  {inst['state']}  "
                     f"restarts {inst['restarts']}{lag}")
    for pair in st.get("pairs", []):
        lines.append(f"  pair {pair['pair']}  primary {pair['primary']}  secondary {pair['secondary'] or '-'}  "
                     f"generation {pair['generation']}  buckets {pair.get('buckets', '?')}"
                     + (f"  {pair['load']['pps']:.0f} pps  busy {pair['load']['busy']:.0%}" if pair.get("load") else "")
                     + ("  (moving)" if pair.get("moving") else ""))
    if st.get("draining"):
        lines.append(f"  draining: {', '.join(st['draining'])}")
    for op in st.get("operations", [])[-5:]:
        lines.append(f"  {describe_operation(op)}")
    for ev in st["events"][-10:]:
        details = " ".join(f"{k}={v}" for k, v in ev.items() if k not in ("t_ms", "event"))
        lines.append(f"event {ev['t_ms']:.1f} ms  {ev['event']}  {details}")
    return "\n".join(lines)


def describe_operation(op: dict) -> str:
    what = op["kind"] + (f" {op['node']}" if op.get("node") else "")
    took = f" in {op['finished_ms'] - op['started_ms']:.0f} ms" if op.get("finished_ms") is not None else ""
    text = f"operation {op['id']} ({what}) {op['state']}{took}: {op['steps']} steps, {op['hand_overs']} hand-overs"
    if op.get("move"):
        m = op["move"]
        text += f", {m['buckets']} buckets to pair {m['to_pair']} ({m['legs_done']} legs, {m['flows_moved']} flows)"
    if op.get("error"):
        text += f": {op['error']}"
    elif op.get("waiting_for"):
        text += f" (waiting: {op['waiting_for']})"
    return text


BUSY = "is still running"   # the controller's refusal of an operation while another one runs


def ask(endpoint: str, request: dict, timeout_ms: int, busy_wait_s: float = 0.0) -> tuple[str, dict | None]:
    """The endpoint that answered and its reply, or None after printing why there is none (no answer,
    or an error reply). A standby controller names the active one: the request goes there.
    ``busy_wait_s``: an operation refused because another one runs (one the controller started by
    itself, a rebalance after a restart) is asked again until it starts or this much time passed."""
    deadline = time.monotonic() + busy_wait_s
    try:
        while True:
            reply = query(endpoint, request, timeout_ms)
            if not reply.get("ok") and isinstance(reply.get("active"), str) and reply["active"] != endpoint:
                print(f"deft-ctl: {endpoint} is a standby controller; asking the active one at {reply['active']}",
                      file=sys.stderr)
                endpoint = reply["active"]
                reply = query(endpoint, request, timeout_ms)
            if reply.get("ok") or BUSY not in str(reply.get("error")) or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    except NoAnswer as exc:
        print(f"deft-ctl: {exc}", file=sys.stderr)
        return endpoint, None
    if not reply.get("ok"):
        print(f"deft-ctl: {reply.get('error')}", file=sys.stderr)
        return endpoint, None
    return endpoint, reply


def report_operation(endpoint: str, op: dict, args) -> int:
    """Print a started operation; with --wait, poll it until it ends (exit 0 done, 1 failed or timed out)."""
    deadline = time.monotonic() + args.wait_s
    while args.wait and op.get("state") == "running":
        if time.monotonic() >= deadline:
            print(f"deft-ctl: gave up waiting after {args.wait_s:.0f} s: {describe_operation(op)}", file=sys.stderr)
            return 1
        time.sleep(0.1)
        endpoint, reply = ask(endpoint, {"cmd": "operation", "id": op["id"]}, args.timeout_ms)
        if reply is None:
            return 1
        op = reply
    if args.json:
        sys.stdout.write(orjson.dumps(op, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(describe_operation(op))
    return 1 if op.get("state") == "failed" else 0


def init_keys_command(args) -> int:
    """``deft-ctl keys init DIR``: the missing keys made, the existing ones kept."""
    split = [[n.strip() for n in text.split(",") if n.strip()] for text in (args.members, args.operators)]
    try:
        made = init_keys(args.dir, split[0], split[1])
    except (DeftError, OSError) as exc:
        print(f"deft-ctl: {exc}", file=sys.stderr)
        return 2
    for path in made:
        print(f"made {path}")
    print(f"{args.dir}: keys for the cluster, members {', '.join(split[0])} and operators "
          f"{', '.join(split[1])} ({len(made)} new; existing keys kept)")
    return 0


def bucket_list(text: str) -> list[int]:
    """``100-199`` or ``5,7,10-12`` -> the bucket numbers (argparse type)."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            first, last = int(lo), int(hi) if sep else int(lo)
            if first < 0 or last < first:
                raise ValueError
            out.extend(range(first, last + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad bucket list {text!r} (expected e.g. 100-199 or 5,7,10-12)") from None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deft-ctl", description="Query and steer DEFT nodes and the controller.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--node", help="node control endpoint (default tcp://127.0.0.1:7101)")
    where.add_argument("--controller", help="controller control endpoint, e.g. tcp://127.0.0.1:7000")
    parser.add_argument("--timeout-ms", type=int, default=2000)
    parser.add_argument("--keys", metavar="DIR", help="a secure cluster's key directory: speak CURVE with "
                        "its operator key (operators/<--operator>.key_secret)")
    parser.add_argument("--operator", default="operator", help="which operator key of --keys [operator]")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_status = sub.add_parser("status", help="show processes, counters and rings (node) or the cluster")
    p_status.add_argument("--json", action="store_true")
    p_fail = sub.add_parser("fail", help="drill, through the controller: SIGKILL an NF worker or a node")
    p_fail.add_argument("what", choices=("nf", "node"))
    p_fail.add_argument("id", help="<node>/nf<i> for nf, <node> for node")
    p_rebalance = sub.add_parser("rebalance", help="spread primaries and secondaries evenly over the live nodes")
    p_drain = sub.add_parser("drain", help="move every pair's roles off a node (planned hand-overs, no loss)")
    p_drain.add_argument("node")
    p_move = sub.add_parser("move", help="move buckets (their flows, state and order) to another pair, no loss")
    p_move.add_argument("--buckets", required=True, type=bucket_list,
                        help="bucket numbers and ranges, e.g. 100-199 or 5,7,10-12")
    p_move.add_argument("--to-pair", required=True, type=int, help="the pair that takes them")
    for p in (p_rebalance, p_drain, p_move):
        p.add_argument("--wait", action="store_true", help="return when it is done (exit 1 if it failed)")
        p.add_argument("--wait-s", type=float, default=120.0, help="give up waiting after this long")
        p.add_argument("--json", action="store_true")
    p_undrain = sub.add_parser("undrain", help="let a drained node take roles again (rebalance to give it some)")
    p_undrain.add_argument("node")
    p_global = sub.add_parser("global", help="the Raft-replicated global state (nodes with [raft])")
    p_global.add_argument("op", choices=("get", "incr", "put", "add_to_set", "delete"))
    p_global.add_argument("key")
    p_global.add_argument("value", nargs="?", help="incr: a number (default 1); put/add_to_set: JSON")
    p_global.add_argument("--linearizable", action="store_true", help="get: through ReadIndex, not this replica")
    p_global.add_argument("--json", action="store_true")
    p_raft = sub.add_parser("raft", help="Raft membership, one change at a time, on the leader's node")
    p_raft.add_argument("op", choices=("add-learner", "promote", "remove", "transfer"))
    p_raft.add_argument("id", type=int, help="the member id")
    p_raft.add_argument("endpoint", nargs="?", help="add-learner: the new member's tcp://HOST:PORT")
    p_raft.add_argument("--json", action="store_true")
    p_keys = sub.add_parser("keys", help="make a secure cluster's CURVE keys (examples/cluster-secure/README.md)")
    p_keys.add_argument("op", choices=("init",))
    p_keys.add_argument("dir", help="the key directory ([security] keys of every config)")
    p_keys.add_argument("--members", default=",".join(DEFAULT_MEMBERS),
                        help="node and controller ids that get a key [%(default)s]")
    p_keys.add_argument("--operators", default=OPERATOR, help="operator key names [%(default)s]")
    args = parser.parse_args(argv)
    if args.cmd == "keys":
        return init_keys_command(args)
    if args.keys:
        try:
            use_keys(load_keys(args.keys, args.operator, operator=True))
        except DeftError as exc:
            print(f"deft-ctl: {exc}", file=sys.stderr)
            return 2
    if args.cmd in ("fail", "rebalance", "drain", "undrain", "move") and not args.controller:
        parser.error(f"{args.cmd} needs --controller")
    endpoint = args.controller or args.node or "tcp://127.0.0.1:7101"
    if args.cmd == "status":
        request = {"cmd": "status"}
    elif args.cmd == "fail":
        request = {"cmd": "fail", "what": args.what, "id": args.id}
    elif args.cmd == "rebalance":
        request = {"cmd": "rebalance"}
    elif args.cmd in ("drain", "undrain"):
        request = {"cmd": args.cmd, "node": args.node}
    elif args.cmd == "move":
        request = {"cmd": "move", "buckets": args.buckets, "to_pair": args.to_pair}
    elif args.cmd == "raft":
        if args.op == "add-learner" and not args.endpoint:
            parser.error("raft add-learner needs the member's endpoint")
        request = {"cmd": "raft_transfer", "to": args.id} if args.op == "transfer" else \
            {"cmd": "raft_member", "op": args.op.replace("-", "_"), "id": args.id, "endpoint": args.endpoint}
    elif args.op == "get":
        request = {"cmd": "global_get", "key": args.key, "linearizable": args.linearizable}
    else:
        try:
            value = [] if args.op == "delete" else [int(args.value or 1)] if args.op == "incr" \
                else [orjson.loads(args.value or "null")]
        except ValueError:
            parser.error(f"global {args.op}: bad value {args.value!r} (incr takes an integer, put JSON)")
        request = {"cmd": "global_op", "op": args.op, "key": args.key, "args": value}
    operation = args.cmd in ("rebalance", "drain", "move")
    endpoint, reply = ask(endpoint, request, args.timeout_ms, args.wait_s if operation and args.wait else 0.0)
    if reply is None:
        return 1
    if operation:
        return report_operation(endpoint, reply, args)
    if args.cmd == "undrain":
        print(f"undrained {args.node}; draining now: {', '.join(reply['draining']) or 'none'}")
    elif args.cmd == "fail":
        print(f"killed {reply['killed']} (pid {reply['pid']})")
    elif args.cmd == "raft" and not args.json:
        m = reply.get("membership")
        print(f"raft {args.op} {args.id}: ok" + (f"; voters {m['voters']} learners {m['learners']}" if m else ""))
    elif args.cmd == "global":
        if args.json:
            sys.stdout.write(orjson.dumps(reply, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            print(orjson.dumps(reply.get("value", reply.get("result"))).decode())
    elif args.json:
        sys.stdout.write(orjson.dumps(reply, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render_cluster(reply) if args.controller else render_status(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
