"""Cluster YAML: presets, overrides, links, round trip, and one clear error per bad input."""

from pathlib import Path

import pytest

from e2llm.errors import InputError
from e2llm.specs.cluster_file import cluster_from_dict, cluster_to_dict, load_cluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "clusters"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_loads_and_round_trips(path):
    cluster = load_cluster(path)
    assert cluster.devices
    assert cluster_from_dict(cluster_to_dict(cluster), cluster.source) == cluster


def test_paper_testbed_is_the_methods_table():
    c = load_cluster(EXAMPLES / "paper-testbed.yaml")
    assert c.names == ("dev1", "dev2", "dev3", "dev4", "dev5", "dev6", "dev7")
    assert [d.memory_gb for d in c.devices] == [12, 12, 12, 6, 22, 22, 25]
    assert [d.host_memory_gb for d in c.devices] == [64, 16, 16, 64, 32, 32, 32]
    assert [d.preset for d in c.devices] == [
        "rtx-5070",
        "apple-m1",
        "apple-m1",
        "rtx-3060-laptop",
        "apple-m2-max",
        "apple-m2-max",
        "jetson-agx-orin-32gb",
    ]
    assert c.link("dev1", "dev7").bandwidth_mbps == 920
    assert c.link("dev1", "dev7").latency_ms == 0.3


def test_wifi_example_has_unequal_links():
    c = load_cluster(EXAMPLES / "wifi-edge-fog.yaml")
    assert 6 <= len(c.devices) <= 10
    speeds = {c.link(a, b).bandwidth_mbps for a in c.names for b in c.names if a != b}
    assert min(speeds) <= 300 and max(speeds) >= 900
    assert c.link("pi", "fog") == c.link("fog", "pi")  # symmetric


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD_DEVICE = "{name: a, memory_gb: 8, tflops: 10, mem_bandwidth_gbs: 100}"
NET = "network: {bandwidth_mbps: 100, latency_ms: 1}\n"


def test_preset_fills_fields_and_explicit_fields_override(tmp_path):
    p = write(tmp_path, "devices:\n  - {name: a, preset: apple-m1, memory_gb: 10}\n" + NET)
    d = load_cluster(p).devices[0]
    assert (d.memory_gb, d.tflops, d.mem_bandwidth_gbs, d.host_memory_gb) == (10, 2.6, 68.25, 16)


def test_profile_path_is_relative_to_the_yaml(tmp_path):
    sub = tmp_path / "site"
    sub.mkdir()
    p = write(sub, f"devices:\n  - {{name: a, preset: rtx-4090, profile: profiles/a.json}}\n{NET}")
    assert load_cluster(p).devices[0].profile == str((sub / "profiles" / "a.json").resolve())


def test_link_overrides_one_field_and_inherits_the_other(tmp_path):
    text = (
        "devices:\n  - {name: a, preset: rtx-4090}\n  - {name: b, preset: apple-m4}\n"
        "  - {name: c, preset: apple-m4}\n"
        "network:\n  bandwidth_mbps: 1000\n  latency_ms: 0.5\n"
        "  links:\n    - {a: a, b: b, bandwidth_mbps: 50}\n"
    )
    c = load_cluster(write(tmp_path, text))
    assert (c.link("b", "a").bandwidth_mbps, c.link("b", "a").latency_ms) == (50, 0.5)
    assert c.link("a", "c").bandwidth_mbps == 1000


BAD = [
    # (yaml text, fragments the one-line message must contain)
    ("devices:\n  - {name: a, preset: rtx5070}\n" + NET, ["devices[0].preset", "rtx-5070", "'rtx5070'"]),
    ("devices:\n  - {name: a, tflops: 1, mem_bandwidth_gbs: 1}\n" + NET, ["devices[0].memory_gb", "missing"]),
    (
        f"devices:\n  - {GOOD_DEVICE}\n  - {{name: b, memory_gb: -4, tflops: 1, mem_bandwidth_gbs: 1}}\n"
        + NET,
        ["devices[1].memory_gb", "> 0", "-4"],
    ),
    ("devices:\n  - {name: a, preset: apple-m1, tflops: 0}\n" + NET, ["devices[0].tflops", "0"]),
    (
        "devices:\n  - {name: a, preset: apple-m1, memory_gb: lots}\n" + NET,
        ["devices[0].memory_gb", "'lots'"],
    ),
    (f"devices:\n  - {GOOD_DEVICE}\n  - {GOOD_DEVICE}\n" + NET, ["devices[1].name", "duplicate", "'a'"]),
    (
        f"devices:\n  - {GOOD_DEVICE}\n  - {{name: b, preset: apple-m1}}\n"
        "network:\n  bandwidth_mbps: 100\n  latency_ms: 1\n  links:\n    - {a: a, b: z, bandwidth_mbps: 5}\n",
        ["network.links[0].b", "unknown device", "'z'"],
    ),
    (
        f"devices:\n  - {GOOD_DEVICE}\nnetwork: {{bandwidth_mbps: 0, latency_ms: 1}}\n",
        ["network.bandwidth_mbps", "0"],
    ),
    (
        f"devices:\n  - {GOOD_DEVICE}\nnetwork: {{bandwidth_mbps: 10, latency_ms: -1}}\n",
        ["network.latency_ms", "-1"],
    ),
    (f"devices:\n  - {GOOD_DEVICE}\n", ["network", "missing"]),
    ("devices: []\n" + NET, ["devices", "at least one"]),
    (
        "devices:\n  - {name: a, preset: apple-m1, memroy_gb: 3}\n" + NET,
        ["devices[0].memroy_gb", "unknown key"],
    ),
    (f"devices:\n  - {GOOD_DEVICE}\n" + NET + "extra: 1\n", ["extra", "unknown key"]),
    ("devices:\n  - {name: a, preset: apple-m1\n" + NET, ["c.yaml:", "malformed YAML"]),
    ("- just\n- a list\n", ["must be a YAML mapping", "list"]),
    ("devices:\n  - [a, b]\n" + NET, ["devices[0]", "mapping"]),
]


@pytest.mark.parametrize(("text", "fragments"), BAD)
def test_bad_cluster_is_one_clear_line(tmp_path, text, fragments):
    p = write(tmp_path, text)
    with pytest.raises(InputError) as err:
        load_cluster(p)
    msg = str(err.value)
    assert "\n" not in msg and str(p) in msg
    for fragment in fragments:
        assert fragment in msg


def test_malformed_yaml_names_the_line(tmp_path):
    p = write(tmp_path, "devices:\n  - name: a\n    preset: [unclosed\nnetwork: {}\n")
    with pytest.raises(InputError, match=r"c\.yaml:\d+: malformed YAML"):
        load_cluster(p)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_cluster(tmp_path / "nope.yaml")
