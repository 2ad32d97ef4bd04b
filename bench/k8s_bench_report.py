"""The bench's results as a table, with ratios against the targets."""

from __future__ import annotations

import os
from typing import Any

TARGET_REQUESTS = 3.0
TARGET_P99_MS = 1000.0
# Threads that may come and go without depending on the number of scans: asyncio's
# default executor (min(32, cpus + 4) threads, started on demand by to_thread) and
# ThreadedChildWatcher's one short-lived thread per running git process.
THREAD_SLACK = min(32, (os.cpu_count() or 1) + 4)


def ratio(value: float, target: float) -> str:
    return f"{value / target:.2f}" if target else "-"


def table(results: dict[str, Any]) -> str:
    lines: list[str] = []

    def row(metric: str, value: str, target: str = "", r: str = "", ok: str = "") -> None:
        lines.append(f"{metric:<58} {value:>22} {target:>12} {r:>7} {ok:>4}")

    row("metric", "value", "target", "ratio", "")
    row("-" * 58, "-" * 22, "-" * 12, "-" * 7, "-" * 4)
    req = results.get("requests")
    if req:
        for r in req["rows"]:
            v = r["requests_per_scan"]
            row(f"API requests/scan, {r['job_seconds']} s Job ({r['scans']} scans, audit)",
                f"{v:.2f}", f"<= {TARGET_REQUESTS:g}", ratio(v, TARGET_REQUESTS),
                "ok" if v <= TARGET_REQUESTS else "FAIL")
            row("  per-scan (create/get/delete jobs, list pods, logs)",
                f"{r['per_scan_requests_per_scan']:.2f} ({r['per_scan_requests']})")
            row("  shared watch (list/watch jobs+pods), amortised",
                f"{r['watch_requests_per_scan']:.2f} ({r['watch_requests']})")
            cc = r["client_counters"]
            if cc:
                row("  client counters: backend.requests / watch lists+watches",
                    f"{cc['backend_requests']} / {cc['watch_lists']}+{cc['watch_watches']}")
    wa = results.get("worker_a")
    if wa and wa.get("lifetime_seconds"):
        row(f"  shared watch over worker A's life ({wa['lifetime_seconds']:.0f} s, "
            f"{wa['scans']} scans)",
            f"{wa['watch_requests_per_scan_lifetime']:.3f} ({wa['watch_requests_lifetime']})")
        row("  all of worker A's requests / scan (incl. start-up)",
            f"{wa['requests_per_scan_lifetime']:.3f}", f"<= {TARGET_REQUESTS:g}",
            ratio(wa["requests_per_scan_lifetime"], TARGET_REQUESTS))
    if req:
        row("  audit identity (user / user agent)", "")
        lines.append(f"    {req['user']} / {', '.join(req['user_agents'])}")
    lat = results.get("latency")
    if lat:
        s = lat["complete_to_next_step_ms"]
        row(f"Complete -> persist_results scheduled, ms ({lat['measured']} scans)",
            f"p50 {s['p50']:.0f} p90 {s['p90']:.0f}", "", "", "")
        row("", f"p99 {s['p99']:.0f} max {s['max']:.0f}", f"p99 < {TARGET_P99_MS:g}",
            ratio(s["p99"], TARGET_P99_MS), "ok" if s["p99"] < TARGET_P99_MS else "FAIL")
        c = lat["complete_to_run_scanner_completed_ms"]
        row("  of which Complete -> run_scanner completed (p50/p99)",
            f"{c['p50']:.0f} / {c['p99']:.0f}")
        c = lat["run_scanner_completed_to_persist_scheduled_ms"]
        row("  of which -> persist_results scheduled (p50/p99)",
            f"{c['p50']:.0f} / {c['p99']:.0f}")
        row("  completions spread over s / max per second",
            f"{lat['completions_spread_seconds']:.0f} / "
            f"{lat['max_completions_in_one_second']}")
        row("  API requests/scan in this phase (audit)", f"{lat['requests_per_scan']:.2f}",
            f"<= {TARGET_REQUESTS:g}", ratio(lat["requests_per_scan"], TARGET_REQUESTS),
            "ok" if lat["requests_per_scan"] <= TARGET_REQUESTS else "FAIL")
    mem = results.get("memory")
    if mem:
        mib = 1024 * 1024
        row("worker RSS idle / warm / all waiting, MiB",
            f"{mem['idle']['rss'] / mib:.0f} / {mem['warm']['rss'] / mib:.0f} / "
            f"{mem['waiting']['rss'] / mib:.0f}")
        row("worker USS idle / warm / all waiting, MiB",
            f"{mem['idle'].get('uss', 0) / mib:.0f} / {mem['warm'].get('uss', 0) / mib:.0f}"
            f" / {mem['waiting'].get('uss', 0) / mib:.0f}")
        row(f"bytes per waiting scan, RSS ({mem['scans']} - {mem['warmup']} warm-up)",
            f"{mem['bytes_per_waiting_scan_rss']:,}")
        row("bytes per waiting scan, USS", f"{mem['bytes_per_waiting_scan_uss']:,}")
        for st in mem.get("steps", []):
            row(f"  RSS / USS MiB, threads at {st['waiting']} waiting",
                f"{st['rss'] / mib:.0f} / {st.get('uss', 0) / mib:.0f}, {st['threads']}")
        grow = mem["threads_after_quiet_window"] - mem["threads_warm"]
        row("worker threads idle / warm / all waiting / +quiet window",
            f"{mem['threads_idle']} / {mem['threads_warm']} / {mem['threads_waiting']} / "
            f"{mem['threads_after_quiet_window']}", "no growth", "",
            "ok" if grow <= THREAD_SLACK else "FAIL")
        row(f"worker -> apiserver req/s while {mem['scans']} wait "
            f"({mem['quiet_window_seconds']:.0f} s)",
            f"{mem['quiet_requests_per_second']:.3f} ({mem['quiet_requests']})", "~0")
        row("worker CPU while they wait", f"{mem['quiet_cpu_percent']:.1f} %")
        row("pods Running / run_scanner starts logged / Jobs created",
            f"{mem['pods_running']} / {mem['run_scanner_started_logged']} / "
            f"{mem['jobs_created_audit']}")
        if "worker_stop_seconds" in mem:
            row("worker graceful stop with all waiting, s", f"{mem['worker_stop_seconds']}")
    tw = results.get("terminated_watchers_at_end") or results.get("terminated_watchers_after_a")
    if tw is not None:
        row("apiserver_terminated_watchers_total (all clients) jobs / pods",
            f"{tw.get('jobs', 0):.0f} / {tw.get('pods', 0):.0f}")
        bw = results.get("bench_watch_streams", {})
        row("  bench's own watch streams opened jobs / pods",
            f"{bw.get('jobs', 0)} / {bw.get('pods', 0)}")
    diag = {k: v for k, v in results.get("config", {}).items()
            if k.startswith("diag_") and v not in (None, False)}
    if diag:
        lines.append(f"DIAGNOSTIC worker options (not the product's defaults): {diag}")
    m = results.get("machine", {})
    loads = " ".join(f"{k.replace('load_', '')}={v[0]:.2f}" for k, v in m.items()
                     if k.startswith("load_"))
    code = results.get("code", {})
    lines.append(f"\nproduct code at {code.get('commit')}"
                 + (f" with local changes: {code['dirty']}" if code.get("dirty") else ""))
    lines.append(f"{m.get('cpus')} CPUs; load avg (1 min) {loads}; wall "
                 f"{results.get('wall_seconds', 0):.0f} s")
    return "\n".join(lines)
