"""The device preset catalog: complete, sourced, positive, and used by cluster files."""

import pytest

from e2llm.errors import InputError
from e2llm.specs.presets import PRESETS, get_preset

REQUIRED = [
    "jetson-orin-nano-8gb",
    "jetson-agx-orin-32gb",
    "jetson-agx-orin-64gb",
    "raspberry-pi-5-8gb",
    "apple-m1",
    "apple-m2-max",
    "apple-m4",
    "rtx-3060-laptop",
    "rtx-4060-laptop",
    "rtx-4090",
    "rtx-5070",
    "mini-pc-x86",
    "a100-40gb",
    "h200",
]


def test_catalog_has_the_required_devices():
    assert len(PRESETS) >= 12
    assert set(REQUIRED) <= set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_sourced_and_positive(name):
    p = PRESETS[name]
    assert p.memory_gb > 0 and p.tflops > 0 and p.mem_bandwidth_gbs > 0 and p.host_memory_gb > 0
    assert len(p.source) > 40, "the source must say where the numbers come from"
    assert name == name.lower() and " " not in name


def test_paper_testbed_memory_matches_the_method_table():
    # e2llm-method.md: usable accelerator / unified memory of the testbed devices
    assert PRESETS["rtx-5070"].memory_gb == 12
    assert PRESETS["apple-m1"].memory_gb == 12
    assert PRESETS["rtx-3060-laptop"].memory_gb == 6
    assert PRESETS["apple-m2-max"].memory_gb == 22
    assert PRESETS["jetson-agx-orin-32gb"].memory_gb == 25
    assert PRESETS["rtx-5070"].mem_bandwidth_gbs == 672
    assert PRESETS["jetson-agx-orin-32gb"].mem_bandwidth_gbs == 204.8


def test_h200_matches_the_measured_reference_card():
    p = PRESETS["h200"]
    assert (p.tflops, p.mem_bandwidth_gbs) == (989.0, 4800.0)


def test_unknown_preset_suggests_close_names():
    with pytest.raises(InputError, match=r"rtx-5070.*got 'rtx5070'"):
        get_preset("rtx5070", "c.yaml: devices[0].preset")
