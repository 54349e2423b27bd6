"""Azure-format trace CSVs: the real files' statistics, speed, caching, and bad rows."""

from pathlib import Path

import numpy as np
import pytest

from e2llm.errors import InputError
from e2llm.specs.trace import load_trace

TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"
needs_traces = pytest.mark.skipif(not TRACES.is_dir(), reason="shared/traces not beside the checkout")


@needs_traces
@pytest.mark.parametrize(
    ("name", "rows", "rate", "in_mean", "in_median", "out_mean", "out_median"),
    [
        ("azure-2023-conv.csv", 19366, 5.5, 1155, 1020, 211, 129),
        ("azure-2023-code.csv", 8819, 2.6, 2048, 1469, 28, 13),
    ],
)
def test_real_traces_match_the_readme_table(name, rows, rate, in_mean, in_median, out_mean, out_median):
    t = load_trace(TRACES / name)
    assert t.rows == rows
    assert 1 / t.mean_interval_s == pytest.approx(rate, abs=0.05)  # README rounds to 0.1
    assert t.input_tokens.mean() == pytest.approx(in_mean, rel=0.01)
    assert np.median(t.input_tokens) == in_median
    assert t.output_tokens.mean() == pytest.approx(out_mean, rel=0.01)
    assert np.median(t.output_tokens) == out_median
    assert t.arrival_s[0] == 0 and np.all(np.diff(t.arrival_s) >= 0)


@needs_traces
def test_conv_trace_is_cached():
    # Its speed (~60 ms for 19,366 rows) is measured by benchmarks/specs_inputs.py, not here.
    path = TRACES / "azure-2023-conv.csv"
    first = load_trace(path)
    assert load_trace(path) is first
    assert not first.arrival_s.flags.writeable


def test_fractional_seconds_of_any_length_and_unsorted_rows(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 23:59:59.9799600,10,1\n"
        "2023-11-16 23:59:58,20,2\n"
        "2023-11-17 00:00:00.5,30,3\n"
    )
    t = load_trace(p)
    assert t.arrival_s.tolist() == pytest.approx([0.0, 1.97996, 2.5])
    assert t.input_tokens.tolist() == [20, 10, 30] and t.output_tokens.tolist() == [2, 1, 3]


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ("2023-11-16 18:17:03.97,12,x\n", [":2", "GeneratedTokens", "'x'"]),
        (
            "2023-11-16 18:17:03.97,12,3\n2023-13-16 18:17:03,1,1\n",
            [":3", "TIMESTAMP", "'2023-13-16 18:17:03'"],
        ),
        ("2023-11-16 18:17:03,-4,3\n", [":2", "ContextTokens", "'-4'"]),
        ("2023-11-16 18:17:03,4\n", [":2", "3 comma-separated"]),
        ("yesterday,4,5\n", [":2", "TIMESTAMP", "'yesterday'"]),
    ],
)
def test_malformed_row_names_file_line_and_value(tmp_path, body, fragments):
    p = tmp_path / "bad.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + body)
    with pytest.raises(InputError) as err:
        load_trace(p)
    msg = str(err.value)
    assert str(p) in msg and "\n" not in msg
    for fragment in fragments:
        assert fragment in msg


def test_bad_header_empty_and_missing(tmp_path):
    (tmp_path / "h.csv").write_text("time,in,out\n1,2,3\n")
    with pytest.raises(InputError, match=r"h\.csv:1: trace header"):
        load_trace(tmp_path / "h.csv")
    (tmp_path / "e.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    with pytest.raises(InputError, match="no rows"):
        load_trace(tmp_path / "e.csv")
    with pytest.raises(InputError, match="not found"):
        load_trace(tmp_path / "none.csv")
