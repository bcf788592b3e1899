"""`python -m bench`: run the matrix, write bench/results/*.jsonl, docs/performance.md and plot.

Installs its own extras into the running environment when they are missing (matplotlib for
the plot, wsproto for uvicorn's `--ws wsproto`), so `make bench` works on a fresh machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import report
from bench.relays import RESULTS, ROOT
from bench.runner import LOADGEN_CPU, RELAY_CPU, Case, Runner, full_plan, machine, quick_plan

EXTRAS = {"matplotlib": "matplotlib>=3.8", "wsproto": "wsproto>=1.2"}
DOC = ROOT / "docs" / "performance.md"
PLOT = ROOT / "docs" / "performance.png"


class Overtime(Exception):
    pass


def ensure_extras() -> None:
    missing = [spec for name, spec in EXTRAS.items() if importlib.util.find_spec(name) is None]
    if missing:
        print(f"[bench] installing {' '.join(missing)}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *missing], check=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="one short repetition (a few minutes)")
    ap.add_argument("--reps", type=int, help="repetitions (default 3, quick 1)")
    ap.add_argument("--n", type=int, nargs="+", help="fan-out room sizes (default 100 1000)")
    ap.add_argument(
        "--only",
        nargs="+",
        metavar="LABEL",
        help="restrict to these relays, e.g. ours/chat.v1 naive node",
    )
    ap.add_argument(
        "--sets",
        nargs="+",
        choices=["fanout", "rooms", "idle", "slow", "churn"],
        help="restrict to these scenarios",
    )
    ap.add_argument("--procs", type=int, default=1, help="load generator processes")
    ap.add_argument(
        "--max-minutes",
        type=float,
        default=60.0,
        help="stop starting new runs after this long (the run always ends)",
    )
    ap.add_argument(
        "--report-only",
        type=Path,
        metavar="JSONL",
        help="only regenerate docs/performance.md and the plot from a results file",
    )
    return ap.parse_args(argv)


def plan_for(args: argparse.Namespace):
    plan = quick_plan() if args.quick else full_plan()
    if args.reps:
        plan.reps = args.reps
    if args.n:
        plan.fanout_n = args.n
    if args.only:
        keep = set(args.only)

        def pick(cases: list[Case]) -> list[Case]:
            return [c for c in cases if c.label in keep]

        plan.fanout_cases, plan.rooms_cases = pick(plan.fanout_cases), pick(plan.rooms_cases)
        plan.idle_cases, plan.slow_cases = pick(plan.idle_cases), pick(plan.slow_cases)
        plan.churn_cases = pick(plan.churn_cases)
    if args.sets:
        for name in ("fanout", "rooms", "idle", "slow", "churn"):
            if name not in args.sets:
                setattr(plan, f"{name}_cases", [])
    return plan


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    ensure_extras()
    if args.report_only:
        sidecar = args.report_only.with_suffix(".meta.json")
        meta = {"command": command.strip(), "wall_min": 0.0, "reps": "?"}
        if sidecar.exists():
            meta = json.loads(sidecar.read_text())
        publish(args.report_only, meta)
        return 0
    if (os.cpu_count() or 1) < 2:
        print("[bench] warning: one CPU, relay and load generator will share it", flush=True)
    else:
        os.sched_setaffinity(0, {LOADGEN_CPU})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    plan = plan_for(args)
    if hard < plan.idle_conns + 1000:
        plan.idle_conns = max(100, hard - 1000)
    out = RESULTS / time.strftime("%Y%m%d-%H%M%S.jsonl")
    started = time.monotonic()
    runner = Runner(plan, out, started + args.max_minutes * 60, args.procs)

    def overtime(*_: object) -> None:
        raise Overtime

    signal.signal(signal.SIGALRM, overtime)
    signal.alarm(int(args.max_minutes * 60) + 600)
    try:
        runner.run()
    except (Overtime, KeyboardInterrupt):
        print("[bench] stopped early; reporting what was measured", flush=True)
    finally:
        signal.alarm(0)
    if not out.exists():
        print("[bench] nothing was measured", flush=True)
        return 1
    meta = {
        "command": command.strip(),
        "date": time.strftime(
            "%Y-%m-%d %H:%M", time.localtime(time.time() - (time.monotonic() - started))
        ),
        "code": _git_state(),
        "wall_min": (time.monotonic() - started) / 60,
        "reps": plan.reps,
        "skipped": runner.skipped,
    }
    out.with_suffix(".meta.json").write_text(json.dumps(meta))
    publish(out, meta)
    return 0


def _git_state() -> str:
    """Which relay code was measured: the commit, and whether the tree had local changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            text=True,
            capture_output=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "relay", "shared"],
            cwd=ROOT,
            text=True,
            capture_output=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in relay/ or shared/" if dirty else "")


def publish(results: Path, meta: dict) -> None:
    res = report.Results(report.load(results))
    from bench.plot import plot

    drawn = plot(res, PLOT)
    meta = {
        **meta,
        "date": meta.get("date") or time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "results": str(results.relative_to(ROOT)) if results.is_relative_to(ROOT) else results,
    }
    report.write(DOC, report.render(res, meta, PLOT.name if drawn else None))
    print(f"[bench] results: {results}\n[bench] report: {DOC}", flush=True)
    print(f"[bench] relay on CPU {RELAY_CPU}, load generator on CPU {LOADGEN_CPU}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
