"""Profile JSON: round trip, fit-on-load, and one test per malformed field."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from costkit import GPT_OSS_20B, LLAMA_8B

from e2llm.cost.profile import (
    FORMAT,
    ProfileSamples,
    fit_profile,
    load_profile,
    make_profile,
    profile_to_dict,
    save_profile,
)
from e2llm.errors import InputError

SAMPLES = ProfileSamples(
    prefill=((128, 6e-4), (512, 8e-4), (2048, 1.8e-3), (4096, 3.5e-3)),
    decode=((1, 512, 5.9e-4), (16, 512, 6.0e-4), (64, 512, 9.1e-4), (16, 4096, 1.5e-3)),
    head=((1, 3.5e-4), (16, 3.5e-4), (64, 3.8e-4)),
    embed=((1, 1e-5), (512, 2e-5)),
)


def profile_dict(model=LLAMA_8B) -> dict[str, Any]:
    p = make_profile(
        device_name="h200",
        torch_device="cuda",
        dtype="bf16",
        model=model,
        samples=SAMPLES,
        memory_bandwidth_gbs=3900.0,
    )
    return profile_to_dict(p)


def test_round_trip(tmp_path: Path) -> None:
    p = make_profile(
        device_name="h200",
        torch_device="cuda",
        dtype="bf16",
        model=GPT_OSS_20B,
        samples=SAMPLES,
        memory_bandwidth_gbs=3900.0,
    )
    path = tmp_path / "p.json"
    save_profile(p, path)
    q = load_profile(path)
    assert q.samples == p.samples
    assert q.fit == p.fit
    assert q.fit_error == pytest.approx(p.fit_error)
    assert q.model == p.model
    assert q.model.n_experts == 32 and q.model.expert_precision == "mxfp4"
    assert (q.device_name, q.torch_device, q.dtype, q.memory_bandwidth_gbs) == (
        "h200",
        "cuda",
        "bf16",
        3900.0,
    )
    assert q.layer_params == GPT_OSS_20B.layer_params
    assert q.source == str(path)
    assert json.loads(path.read_text())["format"] == FORMAT


def test_missing_fit_is_fitted_on_load(tmp_path: Path) -> None:
    d = profile_dict()
    fit = d.pop("fit")
    path = tmp_path / "p.json"
    path.write_text(json.dumps(d))
    p = load_profile(path)
    assert list(p.fit.prefill) == pytest.approx(fit["prefill"])
    assert list(p.fit.decode) == pytest.approx(fit["decode"])


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    keys = path.split(".")

    def edit(d: dict[str, Any]) -> None:
        for k in keys[:-1]:
            d = d[int(k)] if isinstance(d, list) else d[k]
        last = keys[-1]
        if value is _DELETE:
            del d[last]
        elif isinstance(d, list):
            d[int(last)] = value
        else:
            d[last] = value

    return edit


_DELETE = object()

BAD_CASES = [
    ("format", "e2llm-profile/0", "format"),
    ("device", _DELETE, "device"),
    ("device", [1], "device"),
    ("device.name", _DELETE, "device.name"),
    ("device.dtype", "", "device.dtype"),
    ("model", _DELETE, "model"),
    ("model.hidden", -4096, "model.hidden"),
    ("model.n_heads", "32", "model.n_heads"),
    ("model.n_experts", 8, "model.experts_per_token"),
    ("model.weight_precision", "fp8", "model.weight_precision"),
    ("model.layer_params", -1, "model.layer_params"),
    ("samples", _DELETE, "samples"),
    ("samples.prefill", [], "samples.prefill"),
    ("samples.decode", _DELETE, "samples.decode"),
    ("samples.decode.1", [16, 0.1], "samples.decode[1]"),
    ("samples.prefill.0", [128, -1.0], "samples.prefill[0]"),
    ("samples.prefill.0", [12.5, 0.1], "samples.prefill[0]"),
    ("samples.head", "fast", "samples.head"),
    ("fit.prefill", [1.0, 2.0], "fit.prefill"),
    ("fit.decode", [1.0, -2.0, 0.0], "fit.decode"),
    ("fit.head", _DELETE, "fit.head"),
    ("memory_bandwidth_gbs", _DELETE, "memory_bandwidth_gbs"),
    ("memory_bandwidth_gbs", 0, "memory_bandwidth_gbs"),
]


@pytest.mark.parametrize(("path", "value", "field"), BAD_CASES)
def test_bad_field_names_file_and_field(tmp_path: Path, path: str, value: Any, field: str) -> None:
    d = copy.deepcopy(profile_dict())
    _set(path, value)(d)
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(d))
    with pytest.raises(InputError) as e:
        load_profile(f)
    msg = str(e.value)
    assert str(f) in msg and field in msg and "\n" not in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_profile(tmp_path / "nope.json")


def test_malformed_json_names_line(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text('{"format": "e2llm-profile/1",\n "device": }')
    with pytest.raises(InputError, match=r"p\.json:2: malformed JSON"):
        load_profile(f)


def test_top_level_not_object(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text("[1, 2]")
    with pytest.raises(InputError, match="mapping"):
        load_profile(f)


def test_docs_example_is_a_valid_profile(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "profile-format.md").read_text()
    example = doc.split("```json\n", 1)[1].split("```", 1)[0]
    f = tmp_path / "example.json"
    f.write_text(example)
    p = load_profile(f)
    assert p.model.name == "llama-3.1-8b" and p.fit.embed is not None
    # the documented fit is what fit_profile makes of the documented samples (3 digits)
    refit = fit_profile(p.samples)
    assert refit.prefill == pytest.approx(p.fit.prefill, rel=0.01, abs=1e-12)
    assert refit.decode == pytest.approx(p.fit.decode, rel=0.01, abs=1e-12)
    assert refit.head == pytest.approx(p.fit.head, rel=0.01, abs=1e-12)
