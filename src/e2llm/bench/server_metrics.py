"""Server-side figures from a Prometheus `/metrics` endpoint, as deltas over one bench run.

Per-request waiting time reaches the client only up to the first token (the response header is
sent with it), so it covers the prefill queue alone. `e2llm serve` also keeps a histogram of the
whole waiting time (prefill queue + decoder admission queue, DESIGN's definition); its sum and
count before and after a run give the run's mean. Its role-switch counter before and after gives
the run's `role_switches`. A server without `/metrics` (or without the histogram) simply yields
nothing.
"""

from __future__ import annotations

import contextlib

import httpx

WAITING = "e2llm_waiting_seconds"
TTFT = "e2llm_ttft_seconds"
ROLE_SWITCHES = "e2llm_role_switches_total"  # replicas' role changes (switches, borrows, returns)


def scrape(base_url: str, api_key: str | None = None) -> str | None:
    """The text of the server's /metrics, or None when it has none."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = httpx.get(base_url.rstrip("/") + "/metrics", headers=headers, timeout=10.0)
    except httpx.HTTPError:
        return None
    return resp.text if resp.status_code == 200 else None


def metric_sum(text: str, name: str, **labels: str) -> float | None:
    """Sum of the samples of `name` (over all label sets that include `labels`); None if absent.
    Malformed samples are skipped."""
    total, found = 0.0, False
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name or not all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            continue
        with contextlib.suppress(ValueError):
            total += float(value)
            found = True
    return total if found else None


def histogram_totals(
    base_url: str, names: tuple[str, ...] = (WAITING, TTFT), api_key: str | None = None
) -> dict[str, tuple[float, float]]:
    """name -> (sum, count) of each Prometheus histogram found; {} if /metrics is unavailable."""
    text = scrape(base_url, api_key)
    if text is None:
        return {}
    out = {}
    for name in names:
        total, count = metric_sum(text, name + "_sum"), metric_sum(text, name + "_count")
        if total is not None and count is not None:
            out[name] = (total, count)
    return out


def counter_value(base_url: str, name: str, api_key: str | None = None) -> float | None:
    """The sum of counter `name` over its label sets, None without /metrics (0 if never counted)."""
    text = scrape(base_url, api_key)
    return None if text is None else metric_sum(text, name) or 0.0


def mean_deltas(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """name -> mean of the observations made between the two readings (names seen in both)."""
    out = {}
    for name, (s1, c1) in after.items():
        if name in before:
            s0, c0 = before[name]
            if c1 > c0:
                out[name] = (s1 - s0) / (c1 - c0)
    return out
