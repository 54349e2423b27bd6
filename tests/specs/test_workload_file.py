"""Workload YAML / CSV reading: examples, forms, overrides, and one clear error per bad value."""

import itertools
from pathlib import Path

import pytest

from e2llm.errors import InputError
from e2llm.specs.workload import generate_requests, with_load
from e2llm.specs.workload_file import load_workload

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "workloads"
TRACES = ROOT.parent / "shared" / "traces"
needs_traces = pytest.mark.skipif(not TRACES.is_dir(), reason="shared/traces not beside the checkout")


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_loads_and_generates(path):
    if "azure" in path.name and not TRACES.is_dir():
        pytest.skip("shared/traces not beside the checkout")
    w = load_workload(path)
    reqs = generate_requests(w)
    assert len(reqs) == w.requests
    assert w.mean_input_tokens > 0 and w.mean_output_tokens > 0 and w.mean_interval_s > 0


@pytest.mark.parametrize(
    ("name", "mean_in", "mean_out"), [("longreason-extended", 576, 588), ("longreason-custom", 2284, 1004)]
)
def test_longreason_examples_are_the_papers_workloads(name, mean_in, mean_out):
    w = load_workload(EXAMPLES / f"{name}.yaml")
    assert (w.requests, w.seed, w.arrival.process, w.mean_interval_s) == (1000, 1, "fixed", 0.5)
    assert (w.mean_input_tokens, w.mean_output_tokens, w.min_decode_tok_s) == (mean_in, mean_out, 15)


def test_interval_and_rate_overrides_keep_the_process():
    path = EXAMPLES / "longreason-extended.yaml"
    w = load_workload(path, interval_s=2.0)
    assert (w.arrival.process, w.mean_interval_s) == ("fixed", 2.0)
    assert generate_requests(w)[3].arrival_s == 6.0
    w = load_workload(path, rate_per_s=4.0, requests=10)
    assert (w.mean_interval_s, w.requests) == (0.25, 10)
    assert load_workload(EXAMPLES / "smoke.yaml", interval_s=3).arrival.process == "poisson"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"interval_s": 1, "rate_per_s": 1}, "at most one"),
        ({"interval_s": 0}, "interval_s"),
        ({"rate_per_s": -2}, "rate_per_s"),
        ({"requests": 0}, "requests"),
    ],
)
def test_bad_overrides(kwargs, fragment):
    """Named by parameter: the CLI shows them as its flags (tests/cli/test_options.py)."""
    with pytest.raises(InputError, match=fragment):
        load_workload(EXAMPLES / "smoke.yaml", **kwargs)


@needs_traces
def test_trace_replay_and_rescaling():
    w = load_workload(EXAMPLES / "azure-conv.yaml")
    assert w.requests == 19366 and w.is_replay
    assert w.mean_input_tokens == pytest.approx(1155, rel=0.01)
    assert 1 / w.mean_interval_s == pytest.approx(5.5, rel=0.01)
    w2 = load_workload(EXAMPLES / "azure-conv.yaml", rate_per_s=1.0, requests=500)
    reqs = generate_requests(w2)
    assert reqs[-1].arrival_s / (len(reqs) - 1) == pytest.approx(1.0)
    assert w2.mean_interval_s == pytest.approx(1.0)
    raw = generate_requests(with_load(w, requests=500))
    assert [r.input_tokens for r in raw] == [r.input_tokens for r in reqs]  # same rows, slower


@needs_traces
def test_csv_given_directly_is_replayed_and_repeats_past_its_end():
    w = load_workload(TRACES / "azure-2023-code.csv", requests=8819 * 2)
    reqs = generate_requests(w)
    assert reqs[8819].input_tokens == reqs[0].input_tokens
    assert all(a.arrival_s <= b.arrival_s for a, b in itertools.pairwise(reqs))


def test_time_scale_and_rate_in_trace_yaml(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        + "".join(f"2024-01-01 00:00:{s:02d}.0,{10 + s},{s + 1}\n" for s in range(0, 20, 2))
    )
    (tmp_path / "slow.yaml").write_text("trace: t.csv\ntime_scale: 3\n")
    w = load_workload(tmp_path / "slow.yaml")
    assert w.mean_interval_s == pytest.approx(6.0)
    assert generate_requests(w)[1].arrival_s == pytest.approx(6.0)
    (tmp_path / "rate.yaml").write_text("trace: t.csv\nrate_per_s: 0.25\nrequests: 5\n")
    w = load_workload(tmp_path / "rate.yaml")
    assert (w.requests, w.mean_interval_s) == (5, pytest.approx(4.0))
    assert w.mean_input_tokens == pytest.approx(14)  # rows 0..4: 10, 12, 14, 16, 18


def write(tmp_path, text):
    p = tmp_path / "w.yaml"
    p.write_text(text)
    return p


OK_LEN = "{dist: fixed, value: 10}"
BODY = (
    "requests: 5\narrival: {process: fixed, interval_s: 1}\n"
    f"input_tokens: {OK_LEN}\noutput_tokens: {OK_LEN}\n"
)

BAD = [
    (BODY.replace("requests: 5", "requests: 0"), ["requests", "0"]),
    (BODY.replace("requests: 5", "requests: -3"), ["requests", "-3"]),
    (BODY.replace("requests: 5", "requests: 2.5"), ["requests", "integer", "2.5"]),
    (BODY.replace("interval_s: 1", "interval_s: 0"), ["arrival.interval_s", "> 0", "0"]),
    (BODY.replace("interval_s: 1", "interval_s: -1"), ["arrival.interval_s", "-1"]),
    (BODY.replace("interval_s: 1", "rate_per_s: 0"), ["arrival.rate_per_s", "0"]),
    (BODY.replace("fixed, interval_s", "weibull, interval_s"), ["arrival.process", "'weibull'", "poisson"]),
    (BODY.replace("fixed, interval_s: 1", "gamma, interval_s: 1, cv: -0.5"), ["arrival.cv", "-0.5"]),
    (BODY.replace("fixed, interval_s: 1", "gamma, interval_s: 1"), ["arrival.cv", "missing"]),
    (BODY.replace("fixed, interval_s: 1", "poisson, interval_s: 1, cv: 2"), ["arrival.cv", "gamma"]),
    (BODY.replace("interval_s: 1", "interval_s: 1, rate_per_s: 2"), ["arrival", "exactly one"]),
    (
        BODY.replace(f"input_tokens: {OK_LEN}", "input_tokens: {dist: zipf, mean: 3}"),
        ["input_tokens.dist", "'zipf'"],
    ),
    (
        BODY.replace(f"input_tokens: {OK_LEN}", "input_tokens: {dist: lognormal, mean: 0, cv: 1}"),
        ["input_tokens.mean", "0"],
    ),
    (
        BODY.replace(f"input_tokens: {OK_LEN}", "input_tokens: {dist: lognormal, mean: 100, cv: -1}"),
        ["input_tokens.cv", "-1"],
    ),
    (
        BODY.replace(f"output_tokens: {OK_LEN}", "output_tokens: {dist: uniform, min: 10, max: 5}"),
        ["output_tokens.max", "min", "5"],
    ),
    (
        BODY.replace(f"output_tokens: {OK_LEN}", "output_tokens: {dist: lognormal, mean: 5, sigma: 1}"),
        ["output_tokens.sigma", "unknown key"],
    ),
    (
        BODY.replace(f"output_tokens: {OK_LEN}", "output_tokens: {dist: trace, path: gone.csv}"),
        ["gone.csv", "not found"],
    ),
    (BODY + "requets: 4\n", ["requets", "unknown key"]),
    (BODY + "min_decode_tok_s: 0\n", ["min_decode_tok_s", "0"]),
    (BODY + "seed: -1\n", ["seed", "-1"]),
    (BODY + "time_scale: 2\n", ["time_scale", "trace"]),
    (BODY.replace("requests: 5\n", ""), ["requests", "missing"]),
    ("trace: missing.csv\n", ["missing.csv", "not found"]),
    ("trace: t.csv\ntime_scale: 0\n", ["time_scale", "0"]),
    ("trace: t.csv\ntime_scale: 2\nrate_per_s: 1\n", ["rate_per_s", "not both"]),
    (f"trace: t.csv\ninput_tokens: {OK_LEN}\n", ["input_tokens", "not allowed"]),
    ("requests: [1\n", ["w.yaml:", "malformed YAML"]),
    ("[1, 2]\n", ["mapping"]),
]


@pytest.mark.parametrize(("text", "fragments"), BAD)
def test_bad_workload_is_one_clear_line(tmp_path, text, fragments):
    (tmp_path / "t.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-01-01 00:00:00,1,1\n")
    p = write(tmp_path, text)
    with pytest.raises(InputError) as err:
        load_workload(p)
    msg = str(err.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg


def test_missing_workload_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_workload(tmp_path / "w.yaml")


def test_trace_sampling_draws_real_pairs_with_synthetic_arrivals(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        + "".join(f"2024-01-01 00:00:{s:02d},{100 + s},{s + 1}\n" for s in range(10))
    )
    (tmp_path / "w.yaml").write_text(
        "trace: t.csv\nrequests: 200\narrival: {process: poisson, rate_per_s: 2}\n"
    )
    w = load_workload(tmp_path / "w.yaml")
    reqs = generate_requests(w)
    assert len(reqs) == 200 and w.mean_interval_s == 0.5
    assert all(r.input_tokens - 100 == r.output_tokens - 1 for r in reqs)  # pairs kept together
    assert len({r.input_tokens for r in reqs}) == 10
