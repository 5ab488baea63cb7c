"""The paper's figures, run again on this implementation, with the paper's reported numbers beside ours.

    .venv/bin/python benchmarks/figures.py [--out docs/figures] [--quick] [--only 2a,2b,...]
    make figures

Every experiment runs on ``examples/cluster`` (3 nodes, NAT, replication on;
ports replaced by free ones) except Fig. 2d and Fig. 3, which need global
state: 3 nodes with Raft running ``flowcounter``, as in ``global_updates.py``.
The traffic is deft-trafficgen's (500 flows, 70 % UDP, 30 % TCP, 128-byte
frames), after a warm-up that creates every flow.

  fig2a.png   batch size vs latency (p50, p99) at 10 kpps
  fig2b.png   offered vs processed rate, for several batch sizes
  fig2c.png   input buffer (in batches) vs packets lost, at several rates
  fig2d.png   global updates per batch vs processed rate, at several rates
  fig3.png    processed rate through 100 consecutive global updates (10 ms bins)
  before_after.png   latency and CPU per packet vs offered rate, the data path before and after the
              efficiency issue (only with --before PATH: a checkout of the older code with its .venv)

The paper's points (its section VII; read off its text, as the figures' data are not published) are
drawn as black crosses: batch 50 at 10 kpps 2.41 ms; 8 -> 7.95 and 10 -> 9.91 kpps processed;
buffer of one batch at 14 kpps loses 257 of 50,000, of five batches none; 6 kpps with one update
per batch keeps 6 kpps, 10 kpps with ten per batch falls to 5.48 kpps; 100 consecutive updates
drop the rate to 1.9 kpps for 100 ms. Their machine had 16 cores; this one has 2, shared by every
process of three nodes, the generator and the sink.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import efficiency as E  # noqa: E402

from deft.runtime.control import query  # noqa: E402
from deft.tools.localnode import LocalCluster  # noqa: E402

PAPER = {
    "2a": [(50, 2.41)],
    "2b": [(8000, 7950), (10000, 9906)],
    "2c": [(1, 14000, 257 / 50000 * 100), (5, 14000, 0.0)],
    "2d": [(1, 6000, 6000), (10, 10000, 5484)],
    "3": (1.9, 100),
}


def cluster(tmp: Path, **nf: Any) -> E.ExampleNodes:
    d = E.ROOT / "examples" / "cluster"
    return E.ExampleNodes("cluster", tmp, [d / f"node{k}.toml" for k in (1, 2, 3)], d / "controller.toml",
                          overrides={("nf", k): v for k, v in nf.items()})


def run(dev, tmp: Path, rate: int, seconds: float) -> dict:
    report, _ = E.run_traffic(dev, tmp, rate, max(int(rate * seconds), 500))
    return report


def fig2a(tmp: Path, quick: bool) -> dict:
    out = {}
    for batch in (10, 25, 50, 100):
        dev = cluster(tmp, batch_size=batch)
        try:
            run(dev, tmp, 2000, 0.5)
            r = run(dev, tmp, 10000, 1.5 if quick else 3.0)
            out[batch] = {"p50": r["latency_us"]["p50"] / 1000, "p99": r["latency_us"]["p99"] / 1000,
                          "lost": r["lost"]}
        finally:
            dev.stop()
        print(f"fig2a batch {batch}: {out[batch]}", flush=True)
    return out


def fig2b(tmp: Path, quick: bool) -> dict:
    out: dict[int, list] = {}
    rates = (2000, 5000, 10000, 15000, 20000, 30000)
    for batch in (10, 50, 100):
        dev = cluster(tmp, batch_size=batch)
        try:
            run(dev, tmp, 2000, 0.5)
            out[batch] = []
            for rate in rates:
                r = run(dev, tmp, rate, 1.0 if quick else 2.0)
                out[batch].append((rate, r.get("receive_rate_pps") or 0, r["lost"]))
        finally:
            dev.stop()
        print(f"fig2b batch {batch}: {out[batch]}", flush=True)
    return out


def fig2c(tmp: Path, quick: bool) -> dict:
    out: dict[int, list] = {}
    for buffers in (1, 2, 5, 10):
        dev = cluster(tmp, batch_size=50, buffer_batches=buffers)
        try:
            run(dev, tmp, 2000, 0.5)
            out[buffers] = []
            for rate in (10000, 14000, 20000):
                r = run(dev, tmp, rate, 1.0 if quick else 2.0)
                out[buffers].append((rate, 100 * r["lost"] / max(r["sent"], 1)))
        finally:
            dev.stop()
        print(f"fig2c buffer {buffers}: {out[buffers]}", flush=True)
    return out


def raft_cluster(tmp: Path, k: int) -> LocalCluster:
    c = LocalCluster(tmp, f"fg{k}", 3, kind="flowcounter", params={"global_updates_per_batch": k},
                     raft=True, nf={"batch_size": 50}, logs=False)
    c.wait_ready()
    deadline = time.monotonic() + 20
    while not any((n.status()["raft"] or {}).get("role") == "leader" for n in c.nodes):
        if time.monotonic() > deadline:
            raise RuntimeError("no Raft leader")
        time.sleep(0.1)
    return c


def fig2d(tmp: Path, quick: bool) -> dict:
    out: dict[int, list] = {}
    for k in (0, 1, 5, 10):
        c = raft_cluster(tmp, k)
        try:
            E.run_traffic(_Dev(c), tmp, 2000, 1000)
            out[k] = []
            for rate in (4000, 6000, 10000):
                r = run(_Dev(c), tmp, rate, 1.0 if quick else 2.0)
                out[k].append((rate, r.get("receive_rate_pps") or 0))
        finally:
            c.stop()
        print(f"fig2d updates {k}: {out[k]}", flush=True)
    return out


def fig3(tmp: Path, quick: bool) -> dict:
    """10 kpps through flowcounter (one update per batch); at 1 s, 100 updates in a row from outside."""
    c = raft_cluster(tmp, 1)
    try:
        dev = _Dev(c)
        E.run_traffic(dev, tmp, 2000, 1000)
        leader = next(n for n in c.nodes if (n.status()["raft"] or {}).get("role") == "leader")
        times: list[float] = []

        def burst() -> None:
            time.sleep(1.0)
            t0 = time.monotonic()
            for i in range(100):
                query(leader.control, {"cmd": "global_op", "op": "incr", "key": "fig3/burst", "args": [1]}, 3000)
            times.append(time.monotonic() - t0)

        t = threading.Thread(target=burst)
        t.start()
        report, _ = E.run_traffic(dev, tmp, 10000, 30000 if not quick else 20000)
        t.join()
        timeline = report.get("timeline") or []
        return {"timeline": timeline, "burst_s": times[0] if times else None}
    finally:
        c.stop()


class _Dev:
    """A LocalCluster seen as an efficiency.py device (ingress, egress, roots)."""

    def __init__(self, c: LocalCluster):
        self.ingress, self.egress, self.c = c.ingress, c.egress, c

    def roots(self) -> list[int]:
        return [n.proc.pid for n in self.c.nodes] + [self.c.ctl.proc.pid]


def before_after(tmp: Path, before: Path, quick: bool) -> dict:
    """Each cluster alone (an idle cluster's own wake-ups would be load on the other), in turn."""
    out: dict[str, list] = {}
    for name in ("cluster-before", "cluster"):
        dev = E.start_devices([name], tmp, before=before)[name]
        out[name] = []
        try:
            run(dev, tmp, 2000, 0.5)
            for rate in (200, 1000, 3000, 10000):
                m = E.measure(dev, tmp, rate, 1.5 if quick else 3.0)
                out[name].append((rate, m["p50_us"], m["p99_us"], m["cpu_us_per_packet"], m["cores"]))
                print(f"before/after {name} {rate}: {out[name][-1]}", flush=True)
        finally:
            dev.stop()
    return out


def plot(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []

    def save(fig, name: str) -> None:
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

    if "2a" in results:
        d = results["2a"]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        xs = sorted(d, key=int)
        ax.plot([int(x) for x in xs], [d[x]["p50"] for x in xs], "o-", label="DEFT p50")
        ax.plot([int(x) for x in xs], [d[x]["p99"] for x in xs], "s--", label="DEFT p99")
        ax.plot(*zip(*PAPER["2a"]), "kx", ms=10, label="paper")
        ax.set(xlabel="batch size (packets)", ylabel="latency (ms)", title="Fig. 2a: batch size vs latency, 10 kpps")
        ax.set_yscale("log")
        ax.legend()
        save(fig, "fig2a.png")
    if "2b" in results:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for batch, pts in results["2b"].items():
            ax.plot([p[0] / 1000 for p in pts], [p[1] / 1000 for p in pts], "o-", label=f"batch {batch}")
        top = max(p[0] for pts in results["2b"].values() for p in pts) / 1000
        ax.plot([0, top], [0, top], ":", color="grey", label="offered")
        ax.plot([p[0] / 1000 for p in PAPER["2b"]], [p[1] / 1000 for p in PAPER["2b"]], "kx", ms=10, label="paper")
        ax.set(xlabel="offered (kpps)", ylabel="processed (kpps)", title="Fig. 2b: offered vs processed")
        ax.legend()
        save(fig, "fig2b.png")
    if "2c" in results:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        rates = [p[0] for p in next(iter(results["2c"].values()))]
        for j, rate in enumerate(rates):
            xs = sorted(results["2c"], key=int)
            ax.plot([int(x) for x in xs], [results["2c"][x][j][1] for x in xs], "o-", label=f"{rate // 1000} kpps")
        ax.plot([p[0] for p in PAPER["2c"]], [p[2] for p in PAPER["2c"]], "kx", ms=10, label="paper, 14 kpps")
        ax.set(xlabel="input buffer (batches of 50)", ylabel="lost (%)", title="Fig. 2c: input buffer vs loss")
        ax.legend()
        save(fig, "fig2c.png")
    if "2d" in results:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ks = sorted(results["2d"], key=int)
        rates = [p[0] for p in results["2d"][ks[0]]]
        for j, rate in enumerate(rates):
            ax.plot([int(k) for k in ks], [results["2d"][k][j][1] / 1000 for k in ks], "o-", label=f"{rate // 1000} kpps")
        ax.plot([p[0] for p in PAPER["2d"]], [p[2] / 1000 for p in PAPER["2d"]], "kx", ms=10, label="paper")
        ax.set(xlabel="global updates per batch", ylabel="processed (kpps)", title="Fig. 2d: global updates vs throughput")
        ax.legend()
        save(fig, "fig2d.png")
    if "3" in results:
        tl = results["3"]["timeline"][1:-1]   # the first and last bins are partial
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([b["t_ms"] / 1000 for b in tl], [b["received"] * 10 / 1000 for b in tl], "-", label="DEFT")
        ax.axvline(1.0, color="grey", ls=":", label="100 updates start")
        ax.axhline(PAPER["3"][0], color="k", ls="--", lw=0.8, label=f"paper's dip ({PAPER['3'][0]} kpps, 100 ms)")
        ax.set(xlabel="time (s)", ylabel="processed (kpps, 100 ms bins)",
               title="Fig. 3: 100 consecutive global updates at 10 kpps")
        ax.legend()
        save(fig, "fig3.png")
    if "before_after" in results:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
        for name, pts in results["before_after"].items():
            label = "before (4 processes per node's I/O)" if name.endswith("-before") else "after (one io per node)"
            a1.plot([p[0] for p in pts], [p[1] / 1000 for p in pts], "o-", label=f"{label} p50")
            a2.plot([p[0] for p in pts], [p[3] for p in pts], "o-", label=label)
        a1.set(xscale="log", yscale="log", xlabel="offered (pps)", ylabel="latency p50 (ms)",
               title="examples/cluster latency")
        a2.set(xscale="log", yscale="log", xlabel="offered (pps)", ylabel="CPU per packet (us)",
               title="examples/cluster CPU per packet")
        a1.legend(fontsize=7)
        a2.legend(fontsize=7)
        save(fig, "before_after.png")
    return made


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="figures.py")
    ap.add_argument("--out", type=Path, default=E.ROOT / "docs" / "figures")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="2a,2b,2c,2d,3,before_after")
    ap.add_argument("--before", type=Path, help="a checkout of the code before the efficiency issue, with .venv")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = args.only.split(",")
    results: dict[str, Any] = {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name, fn in (("2a", fig2a), ("2b", fig2b), ("2c", fig2c), ("2d", fig2d), ("3", fig3)):
            if name in wanted:
                results[name] = fn(tmp, args.quick)
        if "before_after" in wanted and args.before is not None:
            results["before_after"] = before_after(tmp, args.before, args.quick)
    saved = args.out / "figures.json"   # a partial run (--only) keeps the other figures' data
    previous = orjson.loads(saved.read_bytes()) if saved.exists() else {}
    results = {**previous, **{k: v for k, v in results.items()}}
    saved.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    for path in plot(results, args.out):
        print(f"wrote {path}")
    print(f"figures took {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
