"""Replication overhead, side by side: two 2-node NAT clusters, secondaries off and on.

    .venv/bin/python benchmarks/replication_overhead.py [--trial-seconds 2]

Each cluster is a controller, an ingress node and a fabric-only node; the
controller places every instance's pair across the two nodes. With
``[nf] replicate`` every packet is copied to its secondary and every batch
is committed by 2PC before release. Printed: latency at 10 kpps (after a
warm-up) and the highest zero-loss rate of each, the searches advancing in
turn (see e2e_rates.py), and the on/off ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_rates import RateSearch, latency_at, trial  # noqa: E402

from deft.tools.localnode import LocalCluster  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trial-seconds", type=float, default=2.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clusters: dict[str, LocalCluster] = {}
        try:
            for name, on in (("off", False), ("on", True)):
                clusters[name] = LocalCluster(Path(tmp), name, replicate=on, logs=False)
            lat = {}
            for name, c in clusters.items():
                c.wait_ready()
                trial(c.ingress, c.egress, 5_000, 1.0)  # warm-up: the flows exist before latency is measured
                lat[name] = latency_at(c.ingress, c.egress)
            searches = {name: RateSearch() for name in clusters}
            while not all(s.done for s in searches.values()):
                for name, c in clusters.items():  # one trial each per round: the same background noise
                    s = searches[name]
                    if not s.done:
                        rate = s.next_rate()
                        s.record(rate, trial(c.ingress, c.egress, rate, args.trial_seconds))
            for name, s in searches.items():
                l = lat[name]
                print(f"secondaries {name:3s}: zero-loss {s.good:>8,} pps   latency @10 kpps "
                      f"p50 {l.get('p50', float('nan')):6.0f} us  p99 {l.get('p99', float('nan')):6.0f} us  "
                      f"(lost {l['lost']})")
            print(f"\nreplication on / off zero-loss rate: {searches['on'].good / (searches['off'].good or 1):.2f}")
        finally:
            for c in clusters.values():
                c.stop()

if __name__ == "__main__":
    main()
