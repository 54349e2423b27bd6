"""`e2llm bench URL --workload W`: replay a workload against a live OpenAI-compatible server."""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import sys
from typing import Any

from e2llm.cli.logs import add_log_level
from e2llm.cli.options import add_arrivals, add_seed, add_workload
from e2llm.cli.progress import progress_bar
from e2llm.errors import InputError

EXAMPLES = """examples:
  e2llm serve &                       # the embedded default, http://127.0.0.1:8000
  e2llm bench http://127.0.0.1:8000 --workload examples/workloads/smoke.yaml
  e2llm bench http://127.0.0.1:8000 --workload examples/workloads/smoke.yaml --interval 2 \\
      --max-requests 30 --max-seconds 120 --json --out results/bench/

Requests are sent open-loop at the workload's arrival times (same seed, same requests as
`e2llm simulate`), as streamed /v1/completions with token-id prompts of the workload's input
length and max_tokens = its output length (ignore_eos). --json prints the metrics object of
DESIGN "Metrics JSON"; --out also writes metrics.json, requests.csv and cdf.png. Failed requests
(HTTP errors, timeouts, unfinished at --max-seconds) are counted, never retried; the exit
status is 1 when no request completed, 2 for bad input (unreachable URL included).

TTFT, TBT and E2E are client-side. Per-request waiting time is the server's x-e2llm-queue-s
header (arrival -> prefill start: headers leave with the first token); where the server has
Prometheus /metrics, "server" adds the run's mean of the whole waiting time (prefill plus
decoder-admission queues) and of the server-side TTFT, and role_switches counts the server's
replicas' role changes during the run. TTFT means what it means in `e2llm simulate`: arrival ->
first generated token delivered, whatever the plan type; second_token_s (first -> second token)
shows a disaggregated plan's KV hand-off and wait for a decode slot."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="measure a live server under a workload's load (TTFT, TBT, E2E, waiting time)",
        description="Open-loop load generator for an OpenAI-compatible server (e.g. `e2llm serve`).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", metavar="URL", help="server base URL, e.g. http://127.0.0.1:8000")
    add_workload(p)
    p.add_argument("--model", help="model name to request (default: the first one the server lists)")
    add_seed(p, "the requests")
    add_arrivals(p)
    p.add_argument(
        "--requests", type=int, metavar="N", help="number of requests to generate (default: the workload's)"
    )
    p.add_argument("--max-requests", type=int, metavar="N", help="send at most N requests")
    p.add_argument(
        "--max-seconds", type=float, default=600.0, metavar="S", help="stop after S s (default %(default)s)"
    )
    p.add_argument(
        "--timeout", type=float, default=120.0, metavar="S", help="longest silence inside a response"
    )
    p.add_argument("--api-key", help="API key (default: $E2LLM_API_KEY)")
    p.add_argument("--json", action="store_true", help="print the metrics JSON instead of a table")
    p.add_argument("--out", metavar="DIR", help="also write metrics.json, requests.csv and cdf.png here")
    add_log_level(p)
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    if not args.url.startswith(("http://", "https://")):
        raise InputError("URL", "must start with http:// or https://", args.url)
    for name, value in (("--max-seconds", args.max_seconds), ("--timeout", args.timeout)):
        if not math.isfinite(value) or value <= 0:
            raise InputError(name, "must be a positive number", value)
    if args.max_requests is not None and args.max_requests < 1:
        raise InputError("--max-requests", "must be >= 1", args.max_requests)


def _write_out(out: str, records: list[Any], doc: dict[str, Any]) -> None:
    from e2llm.cli.sim_output import out_folder
    from e2llm.report.csv_out import write_requests_csv
    from e2llm.report.plots import plot_cdfs

    d = out_folder(out)
    (d / "metrics.json").write_text(json.dumps(doc, indent=2) + "\n")
    write_requests_csv(records, d / "requests.csv")
    plot_cdfs({"bench": records}, d / "cdf.png", "measured")


def run(args: argparse.Namespace) -> int:
    from e2llm.bench.load import BenchSettings, run_load, served_models
    from e2llm.bench.server_metrics import (
        ROLE_SWITCHES,
        TTFT,
        WAITING,
        counter_value,
        histogram_totals,
        mean_deltas,
    )
    from e2llm.report.table import metrics_table
    from e2llm.sim.metrics import summarize
    from e2llm.specs.workload import generate_requests
    from e2llm.specs.workload_file import load_workload

    _check_args(args)
    workload = load_workload(
        args.workload, interval_s=args.interval, rate_per_s=args.rate, requests=args.requests
    )
    requests = generate_requests(workload, args.seed)
    api_key = args.api_key or os.environ.get("E2LLM_API_KEY")
    models = served_models(args.url, api_key)
    model = args.model or (models[0] if models else None)
    if model is None:
        raise InputError("URL", "the server lists no model; pass --model", args.url)
    settings = BenchSettings(
        base_url=args.url,
        model=model,
        api_key=api_key,
        max_requests=args.max_requests,
        max_seconds=args.max_seconds,
        request_timeout_s=args.timeout,
    )
    with progress_bar("bench", "req") as progress:
        before = histogram_totals(args.url, api_key=api_key)
        switches = counter_value(args.url, ROLE_SWITCHES, api_key)
        records = asyncio.run(run_load(requests, settings, progress))
        server = mean_deltas(before, histogram_totals(args.url, api_key=api_key))
        switched = counter_value(args.url, ROLE_SWITCHES, api_key)
    role_switches = int(switched - switches) if switches is not None and switched is not None else 0
    doc = summarize(records, workload.min_decode_tok_s, role_switches)
    if server:
        doc["server"] = {"waiting_mean_s": server.get(WAITING), "ttft_mean_s": server.get(TTFT)}
    if args.out:
        _write_out(args.out, records, doc)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"bench {args.url} ({model}), workload {args.workload}: {len(records)} requests sent")
        print(metrics_table([("measured", doc)], label="run"))
        if server.get(WAITING) is not None:
            print(f"server /metrics: mean waiting (prefill + decoder queues) {server[WAITING]:.3f} s")
        if args.out:
            print(f"\nwrote {args.out}/")
    reasons = collections.Counter(r.failed for r in records if r.failed is not None)
    for reason, count in reasons.most_common(5):
        print(f"failed x{count}: {reason}", file=sys.stderr)
    return 0 if doc["completed"] else 1
