"""What ``deft-ctl status`` shows: assembled from counter blocks and rings, no worker asked."""

from __future__ import annotations

import os
import time

from deft.runtime.dataplane.parse import DROP_REASONS


def _ring_info(sup, name: str) -> dict:
    ring = sup.rings[name]
    return {"name": name, "occupancy": ring.occupancy(), "slots": ring.n_slots, "pushed": ring.pushed}


def node_status(sup) -> dict:
    topo, cfg = sup.topo, sup.config
    children = {c.key: c for c in sup.children}

    def proc_info(key: str) -> dict:
        c = children.get(key)
        ready = bool(c and c.alive and sup.stats[c.stats_key].get("ready"))
        return {"pid": c.pid if c else None, "alive": bool(c and c.alive), "ready": ready,
                "restarts": c.restarts if c else 0,
                "last_exit": c.last_exit if c else None}

    io = sup.stats["io"].as_dict()
    io_proc = proc_info("io")
    instances = []
    for i in topo.instances:
        counters = sup.stats[f"nf{i}"].as_dict()
        primary_of, secondary_of = sup.routes.roles_of(i)
        instances.append({
            "id": f"{topo.node_id}/nf{i}",
            "index": i,
            "kind": cfg.nf.kind,
            # from the routes this node holds: a worker is the primary of some pairs and the
            # secondary of others (the controller's status has the cluster-wide view)
            "role": "primary" if primary_of else "secondary" if secondary_of else "spare",
            "primary_of_pairs": primary_of,
            "secondary_of_pairs": secondary_of,
            "peers": sup.routes.peers_of(i),
            "replication": {k: v for k, v in counters.items()
                            if k.startswith(("repl_", "replica_")) or k == "duplicates"} if cfg.nf.replicate else None,
            **proc_info(f"worker{i}"),
            "counters": {k: v for k, v in counters.items() if not k.startswith("nf.")},
            "nf_counters": {k[3:]: v for k, v in counters.items() if k.startswith("nf.")},
            "input_rings": [_ring_info(sup, topo.nf_ring(i))]
                           + ([_ring_info(sup, topo.dup_ring(i))] if cfg.nf.replicate else []),
            "egress_ring": _ring_info(sup, topo.egress_ring(i)),
            "buckets": sup.routes.local_buckets(i),
        })
    return {
        "node": {
            "id": topo.node_id,
            "pid": os.getpid(),
            "config": sup.config_path,
            "uptime_s": round(time.time() - sup.started, 3),
            "control": cfg.node.control,
            "control_bad_requests": sup.control.bad_requests if sup.control else 0,
            "heartbeats_sent": sup.heartbeats.sent if sup.heartbeats else 0,
            # beats sent more than an interval after their time, and the latest (false suspicions)
            "heartbeats_late": sup.heartbeats.late if sup.heartbeats else 0,
            "heartbeat_late_max_ms": round(sup.heartbeats.late_max_ms, 1) if sup.heartbeats else 0.0,
        },
        # one process does the ingress, the stamping units and the egress (runtime/procs/io.py)
        "io": {**io_proc, "counters": {k: io[k] for k in ("ready", "owner", "rounds", "sleeps")}},
        "ingress": None if not topo.has_ingress else {
            "listen": cfg.ingress.listen,
            **io_proc,
            "counters": {k: io[k] for k in ("received", "accepted", "dropped", "unit_ring_full", "bursts")},
            "drops": {r: io[f"drop_{r}"] for r in DROP_REASONS},
            "unit_rings": [_ring_info(sup, topo.unit_ring(u)) for u in topo.units],
        },
        "units": [{"index": u, **io_proc, "counters": sup.stats[f"unit{u}"].as_dict()} for u in topo.units],
        "instances": instances,
        # what left the node: through the io's egress, and (no replication) from the workers themselves
        "egress": {"send_to": cfg.egress.send_to, **io_proc,
                   "counters": {"sent": io["sent"] + sum(i["counters"]["egress_sent"] for i in instances),
                                "send_errors": io["send_errors"]
                                + sum(i["counters"]["egress_send_errors"] for i in instances),
                                "icmp_refused": io["icmp_refused"]
                                + sum(i["counters"]["egress_icmp_refused"] for i in instances),
                                "bursts": io["egress_bursts"],
                                # timed at the io's egress only: null when the workers send for themselves
                                "node_latency_p50_us": io["node_latency_p50_us"] if io["sent"] else None,
                                "node_latency_p99_us": io["node_latency_p99_us"] if io["sent"] else None}},
        "raft": sup.globalstate.status() if sup.globalstate else None,
        "routes": {"epoch": sup.routes.epoch, "buckets": len(sup.routes.bucket_pair),
                   "nodes": [node[0] for node in sup.routes.nodes()]},
        "fabric": cfg.node.fabric or None,   # workers' packet sockets: this base port + instance
    }
