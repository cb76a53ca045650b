#!/usr/bin/env python3
"""report.py: results.md and the plots of the benchmark, from run.sh's raw data.

    python3 bench/report.py [--data bench/tmp/data] [--results bench/results]

Reads DATA/CONFIG/machine.tsv and DATA/CONFIG/manifest.tsv (one line per measured run:
workload, variant, implementation, round, tps, latency file, extra) and the
latency files they name; writes RESULTS/results.md, RESULTS/summary.csv,
and the PNG plots (gnuplot, when installed; their data under
DATA/CONFIG/plots/).  DATA holds one subdirectory per server
configuration, named in DATA/configs.tsv (or the data of one
configuration itself).  Standard library only.
"""

import argparse
import csv
import math
import os
import shutil
import subprocess
import sys

IMPL_NAMES = {
    "ext": "extension (C)",
    "ext_async": "extension, idem.async_reserve = on",
    "plpgsql": "PL/pgSQL baseline",
    "raw": "raw SQL floor",
    "redis": "Redis (in memory)",
}
IMPL_ORDER = ["ext", "ext_async", "plpgsql", "raw", "redis"]
COLORS = {"ext": "#1f77b4", "ext_async": "#17becf", "plpgsql": "#ff7f0e", "raw": "#2ca02c",
          "redis": "#d62728"}


def short(impl):
    """The implementation's name in plots (no underscore: gnuplot subscript)."""
    return impl.replace("_", " ")


def pct(sorted_vals, p):
    """Nearest-rank percentile of an ascending list (p in 0..100)."""
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, math.ceil(p / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def mean(vals):
    return sum(vals) / len(vals) if vals else float("nan")


def fmt(v, digits=2):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def fmt_tps(v):
    if v is None or (isinstance(v, float) and math.isnan(v)) or v == 0:
        return "n/a"
    return f"{v:,.0f}"


def fmt_ratio(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.2f}×"


def read_lat(path, col=0):
    vals = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) > col:
                    vals.append(float(parts[col]))
    except OSError:
        pass
    return vals


def load(data):
    machine = {}
    with open(os.path.join(data, "machine.tsv")) as f:
        for line in f:
            line = line.rstrip("\n")
            if "\t" in line:
                k, v = line.split("\t", 1)
                machine[k] = v
    runs = []
    with open(os.path.join(data, "manifest.tsv")) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            while len(parts) < 7:
                parts.append("")
            w, variant, impl, rnd, tps, lat, extra = parts[:7]
            try:
                tps = float(tps)
            except ValueError:
                tps = 0.0
            ex = {}
            for item in extra.split(";"):
                if "=" in item:
                    k, v = item.split("=", 1)
                    ex[k] = v
            runs.append(dict(workload=w, variant=variant, impl=impl, round=int(rnd),
                             tps=tps, lat=os.path.join(data, lat) if lat else "",
                             extra=ex, failed=extra == "failed"))
    return machine, runs


def impls_in(runs):
    present = {r["impl"] for r in runs}
    return [i for i in IMPL_ORDER if i in present]


class Stat:
    """tps over rounds and latencies (microseconds) pooled over rounds."""

    def __init__(self, runs, col=0, scale=1.0):
        self.rounds = [r["tps"] for r in runs if r["tps"] > 0]
        self.tps = mean(self.rounds) if self.rounds else float("nan")
        lat = []
        for r in runs:
            if r["lat"]:
                lat.extend(v * scale for v in read_lat(r["lat"], col))
        lat.sort()
        self.lat = lat
        self.n = len(lat)
        # server CPU and WAL per operation, weighted by the runs' operations
        self.cpu = self._weighted(runs, "cpu_us")
        self.wal = self._weighted(runs, "wal")
        self.wal_rec = self._weighted(runs, "wal_rec")
        self.wal_fpi = self._weighted(runs, "wal_fpi")
        self.wal_sync = self._weighted(runs, "wal_sync")
        self.commits = self._weighted(runs, "commits")

    @staticmethod
    def _weighted(runs, key):
        tot, n = 0.0, 0
        for r in runs:
            try:
                v, k = float(r["extra"][key]), int(r["extra"]["n"])
            except (KeyError, ValueError):
                continue
            tot += v * k
            n += k
        return tot / n if n else float("nan")

    def p(self, q):
        return pct(self.lat, q)

    def spread(self):
        if len(self.rounds) < 2 or not self.tps or math.isnan(self.tps):
            return float("nan")
        return (max(self.rounds) - min(self.rounds)) / self.tps * 100.0


def select(runs, workload, variant=None, impl=None):
    return [r for r in runs if r["workload"] == workload
            and (variant is None or r["variant"] == variant)
            and (impl is None or r["impl"] == impl)]


def nines_points():
    pts = []
    for i in range(0, 400):
        nines = i / 100.0  # 0 .. 4 nines
        p = 100.0 * (1 - 10 ** (-nines))
        pts.append((nines, p))
    return pts


def write_curve(path, lat_us):
    with open(path, "w") as f:
        for nines, p in nines_points():
            if lat_us and len(lat_us) * (1 - p / 100.0) >= 1:
                f.write(f"{nines:.3f} {pct(lat_us, p) / 1000.0:.4f}\n")
        if lat_us:
            f.write(f"{math.log10(len(lat_us)):.3f} {lat_us[-1] / 1000.0:.4f}\n")


CONFIG_NAMES = {
    "stock": "stock settings (shared_buffers = 128MB, huge_pages = off)",
    "tuned": "tuned settings (shared_buffers a quarter of RAM, huge pages)",
}


def report_config(cfg, data, res):
    """The sections of one server configuration, from its raw data in DATA:
    a dict with the markdown lines (headings from ###), the summary rows and
    the statistics the comparison across configurations needs."""
    machine, runs = load(data)
    pdir = os.path.join(data, "plots")
    os.makedirs(pdir, exist_ok=True)
    for old in os.listdir(pdir):
        os.remove(os.path.join(pdir, old))

    md = []
    summary = []
    w = md.append

    w("## Machine and settings")
    w("")
    w("| | |")
    w("|---|---|")
    rows = [
        ("date", "date"), ("CPU", "cpu"), ("cores", "cores"), ("RAM", "ram"),
        ("virtualisation", "virt"), ("kernel", "kernel"), ("PostgreSQL", "pg"),
        ("server settings", "settings"), ("shared memory", "huge"), ("extension version", "ext"),
        ("source commit", "commit"), ("load average before (1, 5, 15 min)", "load_before"),
        ("load average after", "load_after"), ("Redis", "redis"), ("duration", "duration"),
    ]
    for label, key in rows:
        if key in machine and machine[key]:
            w(f"| {label} | {machine[key]} |")
    w(f"| runs | {machine.get('rounds', '?')} rounds per workload, implementations alternated "
      f"(A B C, then C B A); pgbench `-M prepared -c {machine.get('clients', '?')} "
      f"-j {machine.get('threads', '?')}`, {machine.get('seconds', '?')} s per run |")
    if machine.get("failed"):
        w(f"| **failed workloads** | {machine['failed']} (see the run's output; their rows are missing) |")
    if machine.get("quick") == "1":
        w("| mode | **BENCH_QUICK=1 smoke run**: short runs, numbers are indicative only |")
    w("")

    # ---- workloads 1, 6, 2 ------------------------------------------------
    summary_at = len(md)
    scale_last = {}
    w("## Throughput and latency (workloads 1, 6, 2)")
    w("")
    w("Latency is per pgbench transaction (workloads 1 and 6: reserve + commit, two statements "
      "and two commits; workload 2: one reserve), pooled over the rounds. **vs raw floor**: "
      "throughput divided by the raw SQL floor's in the same workload. **CPU/op**: CPU time of "
      "the server backends per transaction (user + system, read from the postmaster once the "
      "run's backends have exited; background processes and the client not included): unlike "
      "throughput it hardly moves when other work shares the machine, so it is the figure to "
      "compare between commits. **WAL/op**: WAL records / full-page images / bytes per "
      "transaction (`pg_stat_wal`; each run starts after a checkpoint, so the full-page images "
      "per transaction fall as the throughput rises). **WAL flushes/op**: `pg_stat_wal.wal_sync` "
      "over the run per transaction.")
    w("")
    w("| workload | implementation | tps | spread | p50 ms | p99 ms | p99.9 ms | vs raw floor "
      "| CPU/op µs | CPU vs raw | WAL/op rec / FPI / B | WAL flushes/op |")
    w("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    tp_blocks = [("fresh", "logged", "1. reserve + commit, fresh keys (logged)"),
                 ("fresh", "unlogged", "6. reserve + commit, fresh keys (unlogged)"),
                 ("replay", "logged", "2. replay of committed keys")]
    tp_stats = {}
    for wl, variant, label in tp_blocks:
        sel = select(runs, wl, variant)
        if not sel:
            continue
        stats = {i: Stat(select(sel, wl, variant, i)) for i in impls_in(sel)}
        tp_stats[(wl, variant)] = stats
        raw = stats.get("raw")
        for i, st in stats.items():
            ratio = st.tps / raw.tps if raw and raw.tps and not math.isnan(raw.tps) else float("nan")
            cpu_ratio = st.cpu / raw.cpu if raw and not math.isnan(raw.cpu) else float("nan")
            w(f"| {label} | {IMPL_NAMES[i]} | {fmt_tps(st.tps)} | {fmt(st.spread(), 0)}% | "
              f"{fmt(st.p(50) / 1000)} | {fmt(st.p(99) / 1000)} | {fmt(st.p(99.9) / 1000)} | "
              f"{fmt_ratio(ratio)} | {fmt(st.cpu, 1)} | {fmt_ratio(cpu_ratio)} | "
              f"{fmt(st.wal_rec, 1)} / {fmt(st.wal_fpi, 2)} / {fmt(st.wal, 0)} | "
              f"{fmt(st.wal_sync, 3)} |")
            summary.append(dict(workload=f"{wl}-{variant}", impl=i, metric="cpu_us_per_op", value=st.cpu))
            summary.append(dict(workload=f"{wl}-{variant}", impl=i, metric="wal_bytes_per_op", value=st.wal))
            summary.append(dict(workload=f"{wl}-{variant}", impl=i, metric="wal_sync_per_op", value=st.wal_sync))
            summary.append(dict(workload=f"{wl}-{variant}", impl=i, metric="commits_per_op", value=st.commits))
            summary.append(dict(workload=f"{wl}-{variant}", impl=i, metric="tps", value=st.tps))
            summary.append(dict(workload=f"{wl}-{variant}", impl=i, metric="p50_ms", value=st.p(50) / 1000))
            summary.append(dict(workload=f"{wl}-{variant}", impl=i, metric="p99_ms", value=st.p(99) / 1000))
            summary.append(dict(workload=f"{wl}-{variant}", impl=i, metric="ratio_vs_raw", value=ratio))
            write_curve(os.path.join(pdir, f"curve-{wl}-{variant}-{i}.dat"), st.lat)
    if "redis" in impls_in(runs):
        w("")
        w("Redis runs go through `bench/build/idembench` (same 8 clients, its own C client), "
          "not pgbench.")
    w("")

    # ---- workload 3 -----------------------------------------------------------
    hot = select(runs, "hotkey")
    hot_stats = {}
    if hot:
        waiters = hot[0]["variant"].lstrip("w")
        w(f"## Hot key (workload 3): waiter wake latency, {waiters} waiters")
        w("")
        w(f"Per round, one owner reserves a new key, {waiters} sessions reserve the same key and block "
          "(seen waiting in `pg_locks`), then the owner commits. Wake latency = time from the "
          "owner's commit call returning to each waiter's reserve returning (negative when a "
          "waiter got its answer before the owner got its own); in parentheses, from the commit "
          "being sent. The raw floor has no wait: its row lock design keeps the owner's "
          "transaction open from insert to commit, the waiters' `INSERT ... ON CONFLICT DO "
          "NOTHING` block on it, then `SELECT` the response.")
        w("")
        w("| implementation | samples | p50 ms | p90 ms | p99 ms | max ms |")
        w("|---|--:|--:|--:|--:|--:|")
        for i in impls_in(hot):
            sel = [r for r in select(hot, "hotkey", impl=i) if not r["failed"]]
            if not sel:
                w(f"| {IMPL_NAMES[i]} | failed | | | | |")
                continue
            a = Stat(sel, 0)
            s = Stat(sel, 1)
            hot_stats[i] = a
            w(f"| {IMPL_NAMES[i]} | {a.n} | {fmt(a.p(50) / 1000)} ({fmt(s.p(50) / 1000)}) | "
              f"{fmt(a.p(90) / 1000)} ({fmt(s.p(90) / 1000)}) | "
              f"{fmt(a.p(99) / 1000)} ({fmt(s.p(99) / 1000)}) | "
              f"{fmt(a.lat[-1] / 1000)} ({fmt(s.lat[-1] / 1000)}) |")
            for q in (50, 99):
                summary.append(dict(workload="hotkey", impl=i, metric=f"wake_p{q}_ms", value=a.p(q) / 1000))
            summary.append(dict(workload="hotkey", impl=i, metric="wake_max_ms", value=a.lat[-1] / 1000))
            with open(os.path.join(pdir, f"wake-{i}.dat"), "w") as f:
                n = len(a.lat)
                for k, v in enumerate(a.lat):
                    f.write(f"{v / 1000:.4f} {(k + 1) / n:.5f}\n")
        w("")

    # ---- workload 5 -----------------------------------------------------------
    pur = select(runs, "purge")
    purge_stats = {}
    if pur:
        w(f"## Purge (workload 5): reserve + commit while {int(machine.get('purge_keys', 0)):,} "
          "expired keys are purged")
        w("")
        batch = int(pur[0]["extra"].get("batch", "0") or 0)
        if batch > 0:
            how = (f"in batches of {batch:,} keys, each batch a transaction of its own (a `DO` loop "
                   f"with `COMMIT`: extension `idem_purge({batch})`, baseline `bl_purge({batch})`, raw "
                   f"`DELETE ... WHERE ctid = ANY (ARRAY(SELECT ctid ... LIMIT {batch}))`), the way a "
                   "scheduled purge runs")
        else:
            how = ("all in one call (extension `idem_purge()`, baseline `bl_purge()`, raw one "
                   "`DELETE`)")
        w("One pgbench run of reserve + commit on fresh keys per implementation and round; after "
          f"{pur[0]['extra'].get('idle', '?')} s the purge starts in another session, {how}. "
          "Idle = transactions that completed before the purge started (the first second skipped), "
          "during = those that completed while it ran. `BENCH_PURGE_BATCH=0` purges all in one call.")
        w("")
        w("| implementation | purge s | idle tps | idle p50 ms | idle p99 ms | during tps | "
          "during p50 ms | during p99 ms | p99 during / idle |")
        w("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
        for i in impls_in(pur):
            idle, during, durs, idle_secs, during_secs = [], [], [], 0.0, 0.0
            series = None
            for r in select(pur, "purge", impl=i):
                try:
                    t0 = float(r["extra"]["t0"])
                    t1 = float(r["extra"]["t1"])
                except (KeyError, ValueError):
                    continue
                if r["extra"].get("purged") == "failed":
                    continue
                pts = []
                with open(r["lat"]) as f:
                    for line in f:
                        a = line.split()
                        if len(a) == 2 and abs(float(a[0]) - t0) < 86400:
                            pts.append((float(a[0]), float(a[1])))
                if not pts:
                    continue
                # skip the connections' first moments
                start = pts[0][0] + min(1.0, max(0.0, t0 - pts[0][0]) / 4)
                end = pts[-1][0]
                idle.extend(l for t, l in pts if start <= t < t0)
                during.extend(l for t, l in pts if t0 <= t <= t1)
                idle_secs += max(0.0, t0 - start)
                during_secs += max(0.0, min(t1, end) - t0)
                durs.append(t1 - t0)
                if series is None:
                    series = (pts, t0, t1)
            idle.sort()
            during.sort()
            if not idle:
                w(f"| {IMPL_NAMES[i]} | failed | | | | | | | |")
                continue
            ratio = pct(during, 99) / pct(idle, 99) if during else float("nan")
            purge_stats[i] = dict(ratio=ratio, dur=mean(durs), idle99=pct(idle, 99) / 1000,
                                  during99=pct(during, 99) / 1000)
            w(f"| {IMPL_NAMES[i]} | {fmt(mean(durs), 1)} | "
              f"{fmt_tps(len(idle) / idle_secs if idle_secs else float('nan'))} | "
              f"{fmt(pct(idle, 50) / 1000)} | {fmt(pct(idle, 99) / 1000)} | "
              f"{fmt_tps(len(during) / during_secs if during_secs else float('nan'))} | "
              f"{fmt(pct(during, 50) / 1000)} | {fmt(pct(during, 99) / 1000)} | {fmt_ratio(ratio)} |")
            summary.append(dict(workload="purge", impl=i, metric="purge_s", value=mean(durs)))
            summary.append(dict(workload="purge", impl=i, metric="idle_p99_ms", value=pct(idle, 99) / 1000))
            summary.append(dict(workload="purge", impl=i, metric="during_p99_ms", value=pct(during, 99) / 1000))
            summary.append(dict(workload="purge", impl=i, metric="p99_ratio", value=ratio))
            if series:
                pts, t0, t1 = series
                # p99 per 250 ms bucket, time relative to the purge start
                buckets = {}
                for t, l in pts:
                    buckets.setdefault(math.floor((t - t0) / 0.25), []).append(l)
                with open(os.path.join(pdir, f"purge-{i}.dat"), "w") as f:
                    f.write(f"# purge from 0 to {t1 - t0:.3f} s\n")
                    for b in sorted(buckets):
                        v = sorted(buckets[b])
                        f.write(f"{b * 0.25:.2f} {pct(v, 99) / 1000:.4f} {pct(v, 50) / 1000:.4f}\n")
                purge_stats[i]["window"] = t1 - t0
        w("")

    # ---- workload 4 -----------------------------------------------------------
    sc = select(runs, "scale")
    scale_growth = {}
    if sc:
        sizes = sorted({int(r["variant"].split(":")[1]) for r in sc})
        w("## Scale (workload 4): cost per operation against stored keys")
        w("")
        w(f"`bench/build/idembench ops`, {machine.get('clients', '?')} clients, "
          f"{machine.get('scale_seconds', '?')} s per run: **fresh** = reserve + commit of a new "
          "key falling between the stored ones, **replay** = reserve of a random stored key. "
          "Tables loaded with `INSERT ... SELECT generate_series` (committed keys, 48-byte body). "
          "Per size: tps / p50 ms / p99 ms / server CPU µs per operation. Cost = 1 / tps "
          "(machine time per operation); growth = cost at the largest size / cost at the "
          "smallest, and the same for the server CPU per operation.")
        w("")
        head = "| operation | implementation | " + " | ".join(
            f"{s:,} keys" for s in sizes) + " | growth (1/tps) | growth (CPU) |"
        w(head)
        w("|---|---|" + "--:|" * len(sizes) + "--:|--:|")
        for op in ("fresh", "replay"):
            for i in impls_in(sc):
                cells, costs, cpus = [], [], []
                with open(os.path.join(pdir, f"scale-{op}-{i}.dat"), "w") as f:
                    for s in sizes:
                        st = Stat(select(sc, "scale", f"{op}:{s}", i))
                        cost = 1e6 / st.tps if st.tps and not math.isnan(st.tps) else float("nan")
                        costs.append(cost)
                        cpus.append(st.cpu)
                        cells.append(f"{fmt_tps(st.tps)} / {fmt(st.p(50) / 1000)} / "
                                     f"{fmt(st.p(99) / 1000)} / {fmt(st.cpu, 1)}")
                        f.write(f"{s} {cost:.3f} {st.p(50) / 1000:.4f} {st.p(99) / 1000:.4f} {st.cpu:.3f}\n")
                        summary.append(dict(workload=f"scale-{op}-{s}", impl=i, metric="cpu_us_per_op", value=st.cpu))
                        summary.append(dict(workload=f"scale-{op}-{s}", impl=i, metric="tps", value=st.tps))
                        summary.append(dict(workload=f"scale-{op}-{s}", impl=i, metric="p99_ms", value=st.p(99) / 1000))
                growth = costs[-1] / costs[0] if len(costs) > 1 and costs[0] else float("nan")
                cgrowth = cpus[-1] / cpus[0] if len(cpus) > 1 and cpus[0] else float("nan")
                scale_growth[(op, i)] = (growth, sizes[0], sizes[-1], cgrowth)
                last = Stat(select(sc, "scale", f"{op}:{sizes[-1]}", i))
                scale_last[(op, i)] = (last.tps, sizes[-1])
                summary.append(dict(workload=f"scale-{op}", impl=i, metric="cost_growth", value=growth))
                summary.append(dict(workload=f"scale-{op}", impl=i, metric="cpu_growth", value=cgrowth))
                w(f"| {op} | {IMPL_NAMES[i]} | " + " | ".join(cells)
                  + f" | {fmt_ratio(growth)} | {fmt_ratio(cgrowth)} |")
        w("")

    # ---- targets ----------------------------------------------------------------
    w("## The issue's targets for the extension (goals, not gates)")
    w("")
    w("| target | measured | met |")
    w("|---|---|---|")

    def target(name, value, ok, text):
        met = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else ("yes" if ok else "no")
        w(f"| {name} | {text} | {met} |")

    for wl, variant, name in [("fresh", "logged", "workload 1 logged ≥ 1.0× raw floor"),
                              ("fresh", "unlogged", "workload 1 unlogged ≥ 1.0× raw floor"),
                              ("replay", "logged", "workload 2 ≥ 1.0× raw primary-key SELECT")]:
        st = tp_stats.get((wl, variant), {})
        if "ext" in st and "raw" in st and st["raw"].tps:
            r = st["ext"].tps / st["raw"].tps
            others = []
            if "ext_async" in st:
                others.append(f"with idem.async_reserve: {st['ext_async'].tps / st['raw'].tps:.2f}×")
            if "plpgsql" in st:
                others.append(f"PL/pgSQL: {st['plpgsql'].tps / st['raw'].tps:.2f}×")
            if not math.isnan(st["ext"].cpu) and not math.isnan(st["raw"].cpu):
                others.append(f"server CPU per op: {st['ext'].cpu:.1f} µs vs {st['raw'].cpu:.1f} µs, "
                              f"{st['ext'].cpu / st['raw'].cpu:.2f}×")
            extra = f" ({'; '.join(others)})" if others else ""
            target(name, r, r >= 1.0, f"{r:.2f}×{extra}")
        else:
            target(name, None, False, "not measured")
    if "ext" in hot_stats:
        v = hot_stats["ext"].p(99) / 1000
        extra = f" (PL/pgSQL: {hot_stats['plpgsql'].p(99) / 1000:.2f} ms)" if "plpgsql" in hot_stats else ""
        target("workload 3 wake p99 ≤ 2 ms", v, v <= 2.0, f"{v:.2f} ms{extra}")
    else:
        target("workload 3 wake p99 ≤ 2 ms", None, False, "not measured")
    for op in ("fresh", "replay"):
        if (op, "ext") in scale_growth:
            g, s0, s1, cg = scale_growth[(op, "ext")]
            target(f"workload 4 ({op}) cost {s0:,} → {s1:,} keys ≤ 1.3×", g, g <= 1.3,
                   f"{g:.2f}× (server CPU per operation: {fmt_ratio(cg)})")
    if "ext" in purge_stats:
        v = purge_stats["ext"]["ratio"]
        target("workload 5 reserve p99 during purge ≤ 2× idle", v, v <= 2.0, f"{v:.2f}×")
    w("")

    # ---- the summary, at the top -------------------------------------------------
    md[summary_at:summary_at] = summary_table(tp_stats, hot_stats, purge_stats, scale_last,
                                              scale_growth)

    # ---- plots ------------------------------------------------------------------
    plots = write_plots(res, pdir, tp_stats, hot_stats, purge_stats, sc, machine, cfg)
    if plots:
        w("## Plots")
        w("")
        for fname, title in plots:
            w(f"![{title}]({fname})")
            w("")

    for row in summary:
        row["config"] = cfg
    return dict(md=["#" + l if l.startswith("#") else l for l in md], summary=summary,
                tp_stats=tp_stats, hot_stats=hot_stats, purge_stats=purge_stats,
                scale_growth=scale_growth, machine=machine, plots=plots)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(here, "tmp", "data"))
    ap.add_argument("--results", default=os.path.join(here, "results"))
    args = ap.parse_args()
    data, res = args.data, args.results
    # one subdirectory per configuration, named in configs.tsv; or the raw
    # data of a single configuration in DATA itself
    cfgs = []
    if os.path.exists(os.path.join(data, "configs.tsv")):
        with open(os.path.join(data, "configs.tsv")) as f:
            cfgs = [(c, os.path.join(data, c)) for c in f.read().split()]
    elif os.path.exists(os.path.join(data, "manifest.tsv")):
        cfgs = [("", data)]
    cfgs = [(c, d) for c, d in cfgs if os.path.exists(os.path.join(d, "manifest.tsv"))]
    if not cfgs:
        sys.exit(f"report.py: no raw data in {data}: run bench/run.sh first")
    os.makedirs(res, exist_ok=True)
    reps = [(c, report_config(c, d, res)) for c, d in cfgs]

    md = []
    w = md.append
    w("# Benchmark results")
    w("")
    w("Generated by `make bench` (`bench/run.sh`, then `bench/report.py`); do not edit by hand. "
      "The raw samples stay in `bench/tmp/data/` (not in git); `make -C bench report` writes "
      "this file, `summary.csv` and the plots again from them.")
    w("Implementations: **extension** = `idem_reserve`/`idem_commit` (C); **PL/pgSQL baseline** = "
      "`bench/plpgsql_baseline.sql` (a table, `pg_advisory_lock`-based waits, same contract); "
      "**raw SQL floor** = plain SQL on a table of the same shape with no locking or ownership "
      "(`INSERT ... ON CONFLICT DO NOTHING` then `UPDATE`; a primary-key `SELECT` for replays); "
      "**Redis** = `SET NX` + `SET XX`, `GET` on a private in-memory redis-server "
      "(no persistence: a reference point, not a durable store).")
    w("")
    if len(reps) > 1 or reps[0][0]:
        w("Every workload ran under " + " and ".join(
            f"**{c}** {CONFIG_NAMES.get(c, c).split(' ', 1)[-1] if c in CONFIG_NAMES else ''}".rstrip()
            for c, _ in reps) + ", one cluster after the other in the same run, both with fsync on "
          "and otherwise PostgreSQL's defaults.")
        w("")
    w("Other engineers' builds and tests share this machine's CPUs: the load averages (in each "
      "configuration's table of settings) say how busy it was. Alternating the implementations "
      "spreads that noise over all of them; the spread column gives (max - min) / mean of the "
      "per-round throughputs, and the server CPU per operation hardly moves with the load.")
    w("")
    md.extend(compare_configs(reps))
    md.extend(instructions_section(os.path.join(data, "instructions.txt")))
    for c, rep in reps:
        if c:
            w(f"## Configuration: {CONFIG_NAMES.get(c, c)}")
            w("")
        md.extend(rep["md"] if c else [l[1:] if l.startswith("##") else l for l in rep["md"]])

    summary = [row for _, rep in reps for row in rep["summary"]]
    with open(os.path.join(res, "results.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(res, "summary.csv"), "w", newline="") as f:
        cw = csv.writer(f)
        cw.writerow(["config", "workload", "implementation", "metric", "value"])
        for row in summary:
            v = row["value"]
            cw.writerow([row["config"], row["workload"], row["impl"], row["metric"],
                         "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"])
    nplots = sum(len(rep["plots"]) for _, rep in reps)
    print(f"report.py: wrote {os.path.join(res, 'results.md')}"
          + (f" and {nplots} plots" if nplots else " (no plots: gnuplot missing)"))


def instructions_section(path):
    """The instructions per transaction that bench/instructions.sh counted."""
    ins = {}
    try:
        with open(path) as f:
            for line in f:
                a = line.split()
                if len(a) >= 2 and a[1].isdigit():
                    ins[a[0]] = int(a[1])
    except OSError:
        return []
    if not ins:
        return []
    out = ["### Instructions per transaction (callgrind)", "",
           "`bench/instructions.sh` at the end of the run: the server under valgrind's callgrind, "
           "stock settings, one pgbench client; per transaction = the difference between a "
           "connection of 1200 transactions and one of 200, divided by 1000 (connection start and "
           "exit cancel out). Unlike throughput and CPU time this does not move with the machine's "
           "load. Where the instructions of a replay go: `bench/results/profile.md`.", "",
           "| workload | extension | raw SQL floor | extension / raw |", "|---|--:|--:|--:|"]
    for w, label in [("replay", "2. replay of a committed key"), ("fresh", "1. reserve + commit, logged")]:
        e, r = ins.get(f"{w}_ext"), ins.get(f"{w}_raw")
        if e and r:
            out.append(f"| {label} | {e:,} | {r:,} | {e / r:.2f}× |")
    out.append("")
    return out


def compare_configs(reps):
    """The configurations side by side: throughput against the raw floor,
    server CPU per operation, WAL flushes per request, and the targets."""
    out = []
    w = out.append
    blocks = [("fresh", "logged", "1. reserve + commit, logged"),
              ("fresh", "unlogged", "6. reserve + commit, unlogged"),
              ("replay", "logged", "2. replay")]
    names = [c or "this run" for c, _ in reps]
    w("## The configurations side by side")
    w("")
    w("Throughput of each implementation (tps), in parentheses relative to the raw SQL floor of "
      "the same configuration, and the server CPU per transaction (µs; in parentheses relative "
      "to the raw floor's).")
    w("")
    w("| workload | implementation | " + " | ".join(f"{n}: tps (vs raw)" for n in names) + " | "
      + " | ".join(f"{n}: CPU/op µs (vs raw)" for n in names) + " |")
    w("|---|---|" + "--:|" * (2 * len(reps)))
    for wl, variant, label in blocks:
        impls = [i for i in IMPL_ORDER if any(i in rep["tp_stats"].get((wl, variant), {}) for _, rep in reps)]
        for i in impls:
            tcells, ccells = [], []
            for _, rep in reps:
                st = rep["tp_stats"].get((wl, variant), {})
                if i not in st:
                    tcells.append("–")
                    ccells.append("–")
                    continue
                raw = st.get("raw")
                r = st[i].tps / raw.tps if raw and raw.tps and not math.isnan(raw.tps) else float("nan")
                cr = st[i].cpu / raw.cpu if raw and raw.cpu and not math.isnan(raw.cpu) else float("nan")
                tcells.append(f"{fmt_tps(st[i].tps)} ({fmt_ratio(r)})")
                ccells.append(f"{fmt(st[i].cpu, 1)} ({fmt_ratio(cr)})" if not math.isnan(st[i].cpu) else "n/a")
            w(f"| {label} | {IMPL_NAMES[i]} | " + " | ".join(tcells) + " | " + " | ".join(ccells) + " |")
    w("")

    # ---- WAL flushes ----------------------------------------------------------
    if any(not math.isnan(st.wal_sync) for _, rep in reps
           for k, sts in rep["tp_stats"].items() if k == ("fresh", "logged") for st in sts.values()):
        w("### WAL flushes per request (group commit)")
        w("")
        w("`pg_stat_wal.wal_sync` over the run (every process's fsyncs of WAL, the WAL writer's "
          "included) divided by the requests (pgbench transactions: reserve + commit), and the "
          "commits per request (`pg_stat_database.xact_commit`). Each durable commit has to be "
          "flushed once, but a flush covers every commit whose WAL it reaches (group commit): "
          "the floor is one flush per transaction *shared* by all the backends committing "
          "meanwhile, so flushes per commit below 1 say how many commits share one. An "
          "implementation whose request commits twice (reserve, then commit) pays for two "
          "flushes per request unless they are shared; `idem.async_reserve = on` commits the "
          "reservation without waiting for its flush.")
        w("")
        w("| configuration | implementation | flushes / request | commits / request | "
          "flushes / commit | commits sharing a flush |")
        w("|---|---|--:|--:|--:|--:|")
        for c, rep in reps:
            st = rep["tp_stats"].get(("fresh", "logged"), {})
            for i in IMPL_ORDER:
                if i not in st or math.isnan(st[i].wal_sync):
                    continue
                fpc = st[i].wal_sync / st[i].commits if st[i].commits else float("nan")
                w(f"| {c or 'this run'} | {IMPL_NAMES[i]} | {fmt(st[i].wal_sync, 3)} | "
                  f"{fmt(st[i].commits, 2)} | {fmt(fpc, 3)} | "
                  f"{fmt(1 / fpc if fpc else float('nan'), 1)} |")
        w("")

    # ---- targets ----------------------------------------------------------------
    w("### Targets of issue 15 (goals, not gates)")
    w("")
    w("| target | " + " | ".join(names) + " |")
    w("|---|" + "---|" * len(reps))
    for wl, variant, name, only in [("fresh", "logged", "reserve + commit, logged ≥ 1.0× raw floor", "stock"),
                                    ("fresh", "unlogged", "reserve + commit, unlogged ≥ 1.0× raw floor", "stock"),
                                    ("replay", "logged", "replay ≥ 1.0× raw primary-key SELECT", None)]:
        cells = []
        for c, rep in reps:
            st = rep["tp_stats"].get((wl, variant), {})
            if "ext" in st and "raw" in st and st["raw"].tps:
                r = st["ext"].tps / st["raw"].tps
                cr = st["ext"].cpu / st["raw"].cpu if st["raw"].cpu else float("nan")
                goal = "" if only and c and c != only else (" met" if r >= 1.0 else " **not met**")
                cells.append(f"{r:.2f}× (CPU/op {fmt_ratio(cr)}){goal}")
            else:
                cells.append("not measured")
        w(f"| {name}{' (' + only + ')' if only else ''} | " + " | ".join(cells) + " |")
    w("")
    w("Met or not by the mean throughput of the rounds. On a shared machine (see the spread and "
      "the load averages) a ratio within a few percent of 1.0 is within the noise: the server CPU "
      "per operation, and the instructions per transaction of `make -C bench instructions` "
      "(`bench/results/profile.md`), which no load moves, say more.")
    w("")
    return out


def summary_table(tp_stats, hot_stats, purge_stats, scale_last, scale_growth):
    """Every implementation against every workload, in one table."""
    impls = [i for i in IMPL_ORDER
             if any(i in st for st in tp_stats.values()) or i in hot_stats or i in purge_stats
             or any(k[1] == i for k in scale_last)]
    cols = []
    for key, title in [(("fresh", "logged"), "1. reserve + commit"),
                       (("fresh", "unlogged"), "6. unlogged"),
                       (("replay", "logged"), "2. replay")]:
        if key in tp_stats:
            cols.append((title + ": tps (vs raw)", ("tp", key)))
    if hot_stats:
        cols.append(("3. hot key: wake p50 / p99 ms", ("hot", None)))
    for op in ("fresh", "replay"):
        if any(k[0] == op for k in scale_last):
            size = next(v[1] for k, v in scale_last.items() if k[0] == op)
            cols.append((f"4. {op} at {size:,} keys: tps (vs raw); cost growth", ("scale", op)))
    if purge_stats:
        cols.append(("5. purge: p99 idle → during ms", ("purge", None)))
    if not cols:
        return []
    out = ["## Summary", "",
           "Throughput in transactions per second (a transaction of workloads 1, 6 and 4 fresh = "
           "reserve + commit), in parentheses relative to the raw SQL floor measured in the same "
           "run; details and latencies in the sections below.", "",
           "| implementation | " + " | ".join(c[0] for c in cols) + " |",
           "|---|" + "--:|" * len(cols)]
    for i in impls:
        cells = []
        for _, (kind, key) in cols:
            cell = ""
            if kind == "tp":
                st = tp_stats[key]
                if i in st:
                    raw = st.get("raw")
                    r = st[i].tps / raw.tps if raw and raw.tps else float("nan")
                    cell = f"{fmt_tps(st[i].tps)} ({fmt_ratio(r)})"
            elif kind == "hot" and i in hot_stats:
                a = hot_stats[i]
                cell = f"{fmt(a.p(50) / 1000)} / {fmt(a.p(99) / 1000)}"
            elif kind == "scale" and (key, i) in scale_last:
                tps = scale_last[(key, i)][0]
                raw = scale_last.get((key, "raw"), (float("nan"),))[0]
                g = scale_growth.get((key, i), (float("nan"),))[0]
                cell = f"{fmt_tps(tps)} ({fmt_ratio(tps / raw if raw else float('nan'))}); {fmt_ratio(g)}"
            elif kind == "purge" and i in purge_stats:
                ps = purge_stats[i]
                cell = f"{fmt(ps['idle99'])} → {fmt(ps['during99'])}"
            cells.append(cell or "–")
        out.append(f"| {IMPL_NAMES[i]} | " + " | ".join(cells) + " |")
    out.append("")
    return out


def png(name, cfg):
    """The file name of a plot: one set per configuration."""
    return f"{name}-{cfg}.png" if cfg else f"{name}.png"


def write_plots(res, pdir, tp_stats, hot_stats, purge_stats, sc, machine, cfg=""):
    gp = shutil.which("gnuplot")
    if not gp:
        return []
    plots = []
    script = ['set terminal pngcairo size 1200,420 font "sans,10"', 'set grid ytics',
              'set key top left', 'set style fill solid 0.85 border -1']

    # throughput: one panel per workload, one bar per implementation
    blocks = [(k, t) for k, t in [(("fresh", "logged"), "1. reserve+commit (logged)"),
                                  (("fresh", "unlogged"), "6. reserve+commit (unlogged)"),
                                  (("replay", "logged"), "2. replay")] if k in tp_stats]
    if blocks:
        script += [f'set output "{os.path.join(res, png("throughput", cfg))}"',
                   f'set multiplot layout 1,{len(blocks)} title "{cfg + ": " if cfg else ""}Throughput per implementation '
                   f'(pgbench -c {machine.get("clients", "8")}, mean of rounds)"']
        for (wl, variant), title in blocks:
            st = tp_stats[(wl, variant)]
            fn = os.path.join(pdir, f"tps-{wl}-{variant}.dat")
            with open(fn, "w") as f:
                for k, i in enumerate([i for i in IMPL_ORDER if i in st]):
                    f.write(f'{k} "{short(i)}" {st[i].tps:.1f} {int(COLORS[i][1:], 16)}\n')
            script += ['unset key', f'set title "{title}"', 'set ylabel "transactions / s"',
                       'set yrange [0:*]', 'set boxwidth 0.6', 'set xtics rotate by 0',
                       f'plot "{fn}" using 1:3:4:xtic(2) with boxes lc rgb variable, '
                       f'"" using 1:3:(sprintf("%.0f", $3)) with labels offset 0,0.7']
        script += ['unset multiplot']
        plots.append((png("throughput", cfg), "throughput per implementation"))

    # latency percentiles: one panel per workload, one curve per implementation
    if blocks:
        script += [f'set output "{os.path.join(res, png("latency", cfg))}"',
                   f'set multiplot layout 1,{len(blocks)} title "{cfg + ": " if cfg else ""}Latency by percentile (per pgbench transaction)"',
                   'set key top left', 'set logscale y', 'set ylabel "ms"',
                   'set xtics ("50%%" 0.301, "90%%" 1, "99%%" 2, "99.9%%" 3, "99.99%%" 4)',
                   'set xrange [0:4]', 'set yrange [*:*]']
        for (wl, variant), title in blocks:
            st = tp_stats[(wl, variant)]
            parts = []
            for i in [i for i in IMPL_ORDER if i in st]:
                fn = os.path.join(pdir, f"curve-{wl}-{variant}-{i}.dat")
                parts.append(f'"{fn}" using 1:2 with lines lw 2 lc rgb "{COLORS[i]}" title "{short(i)}"')
            script += [f'set title "{title}"', 'plot ' + ", ".join(parts)]
        script += ['unset multiplot', 'unset logscale y', 'set xtics auto', 'set xrange [*:*]']
        plots.append((png("latency", cfg), "latency percentiles"))

    # wake latency distribution
    if hot_stats:
        script += ['set terminal pngcairo size 900,500 font "sans,10"',
                   f'set output "{os.path.join(res, png("wake", cfg))}"',
                   f'set title "{cfg + ": " if cfg else ""}Hot key: waiter wake latency after the owner\'s commit (CDF)"',
                   'set xlabel "ms after the commit returned to the owner"', 'set ylabel "fraction of waiters"',
                   'set key bottom right', 'set yrange [0:1]', 'set xrange [*:*]', 'set grid xtics ytics',
                   'set arrow 1 from 2, graph 0 to 2, graph 1 nohead dt 2 lc rgb "gray40"',
                   'set label 1 "target p99 2 ms" at 2, graph 0.05 offset 0.5,0 tc rgb "gray40"']
        parts = [f'"{os.path.join(pdir, f"wake-{i}.dat")}" using 1:2 with steps lw 2 lc rgb "{COLORS[i]}" title "{short(i)}"'
                 for i in IMPL_ORDER if i in hot_stats]
        script += ['plot ' + ", ".join(parts), 'unset arrow 1', 'unset label 1',
                   'set xlabel ""', 'set yrange [*:*]']
        plots.append((png("wake", cfg), "wake latency distribution"))

    # cost against stored keys
    if sc:
        impls = [i for i in IMPL_ORDER if os.path.exists(os.path.join(pdir, f"scale-fresh-{i}.dat"))]
        script += ['set terminal pngcairo size 1200,800 font "sans,10"',
                   f'set output "{os.path.join(res, png("scale", cfg))}"',
                   f'set multiplot layout 2,2 title "{cfg + ": " if cfg else ""}Cost per operation against stored keys"',
                   'set logscale x', 'set xlabel "stored keys"',
                   'set yrange [0:*]', 'set key below', 'set format x "10^{%T}"']
        for col, ylabel in ((2, "µs of machine time per operation (1 / tps)"),
                            (5, "server CPU µs per operation")):
            for op in ("fresh", "replay"):
                parts = [f'"{os.path.join(pdir, f"scale-{op}-{i}.dat")}" using 1:{col} with linespoints lw 2 pt 7 '
                         f'lc rgb "{COLORS[i]}" title "{short(i)}"' for i in impls]
                title = "reserve + commit, fresh keys" if op == "fresh" else "replay"
                script += [f'set title "{title}"', f'set ylabel "{ylabel}"', 'plot ' + ", ".join(parts)]
        script += ['unset multiplot', 'unset logscale x', 'set format x', 'set xlabel ""', 'set yrange [*:*]']
        plots.append((png("scale", cfg), "cost against stored keys"))

    # purge: p99 per 250 ms bucket around the purge
    if purge_stats and any(os.path.exists(os.path.join(pdir, f"purge-{i}.dat")) for i in purge_stats):
        script += ['set terminal pngcairo size 1200,450 font "sans,10"',
                   f'set output "{os.path.join(res, png("purge", cfg))}"',
                   f'set title "{cfg + ": " if cfg else ""}Reserve + commit p99 per 250 ms while the purge runs (first round; bars = purge windows)"',
                   'set xlabel "s from the purge start"', 'set ylabel "ms"', 'set logscale y',
                   'set key top right', 'set xrange [-3:*]', 'set yrange [*:*]']
        parts = []
        k = 0
        for i in IMPL_ORDER:
            fn = os.path.join(pdir, f"purge-{i}.dat")
            if i in purge_stats and os.path.exists(fn):
                wdw = purge_stats[i].get("window", 0)
                k += 1
                script += [f'set object {k} rect from 0, graph {0.97 - 0.03 * k} to {wdw:.3f}, graph {0.99 - 0.03 * k} '
                           f'fc rgb "{COLORS[i]}" fs solid 0.6 noborder']
                parts.append(f'"{fn}" using 1:2 with lines lw 2 lc rgb "{COLORS[i]}" title "{short(i)}"')
        script += ['plot ' + ", ".join(parts), 'unset logscale y']
        for j in range(1, k + 1):
            script += [f'unset object {j}']
        plots.append((png("purge", cfg), "latency during the purge"))

    script_text = "\n".join(script) + "\n"
    with open(os.path.join(pdir, "plots.gp"), "w") as f:
        f.write(script_text)
    r = subprocess.run([gp, os.path.join(pdir, "plots.gp")], capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write("report.py: gnuplot failed:\n" + r.stderr)
        return []
    return plots


if __name__ == "__main__":
    main()
