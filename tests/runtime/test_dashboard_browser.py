"""The dashboard in a real browser: headless Chromium (Debian's, through its ChromeDriver) opens
`/` of a live `e2llm serve` with an API key, is given the key, shows the plan's replicas and
links, sends a chat message through the page's chat box (streamed, greedy: "Paris"), and sees the
live figures change. One server, one browser; a screenshot stays in the test's tmp dir (and is
copied to $E2LLM_DASHBOARD_SCREENSHOT when set: that is how docs/dashboard.png is made).

`scripts/test.sh` installs `chromium` and `chromium-driver` when they are missing (as root). On
CI a missing browser fails the test; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from e2llm.bench.local_server import serving_plan
from e2llm.runtime.status import Status

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# What Chromium needs on these machines: no sandbox as root, and no background connections (the
# network is closed; they would be refused many at a time).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1250",
)
KEY = "dashboard-key"
MODEL = "smollm2-135m"
PLAN = {
    "system": "test",
    "model": MODEL,
    "objective": 0.0,
    "replicas": [
        {
            "id": 0,
            "role": "PREFILL",
            "devices": [{"name": "cpu0", "layers": [0, 30]}],
            "prefill_tok_s": 250.0,
            "prefill_capacity_tok_s": 250.0,
            "bottleneck_device": "cpu0",
        },
        {
            "id": 1,
            "role": "DECODER",
            "concurrency": 4,
            "devices": [{"name": "cpu1", "layers": [0, 12]}, {"name": "cpu2", "layers": [12, 30]}],
            "decode_tok_s_per_request": 15.0,
            "decode_capacity_tok_s": 60.0,
            "bottleneck_device": "cpu2",
        },
    ],
    "cluster": {
        "devices": [
            {"name": f"cpu{i}", "memory_gb": 2.0, "tflops": 0.1, "mem_bandwidth_gbs": 10.0} for i in range(3)
        ],
        "network": {
            "bandwidth_mbps": 10000,
            "latency_ms": 0.1,
            "links": [{"a": "cpu1", "b": "cpu2", "bandwidth_mbps": 100, "latency_ms": 2}],
        },
    },
}
WAIT_S = 120  # generous: the shared 2-core box may be busy


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving_plan(PLAN, tmp_path_factory.mktemp("serve"), ["--api-key", KEY]) as (url, _, log):
        assert f"dashboard at {url}/" in log.read_text()  # the start-up line says where to look
        yield url


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        message = "needs Debian's chromium and chromium-driver (scripts/test.sh installs them as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _text(driver: WebDriver, css: str) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return str(found[0].text) if found else ""


def test_dashboard_shows_the_plan_and_the_traffic_of_a_chat(
    server: str, browser: WebDriver, tmp_path: Path
) -> None:
    driver = browser
    wait = WebDriverWait(driver, WAIT_S)
    driver.get(f"{server}/")

    # The server wants a key: the page asks for it, and shows nothing before.
    key_input = wait.until(lambda d: d.find_element(By.ID, "key-input"))
    wait.until(lambda d: d.find_element(By.ID, "key-panel").is_displayed())
    assert not driver.find_elements(By.CSS_SELECTOR, ".replica")
    key_input.send_keys(KEY)
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()

    # The plan: both replicas with their roles and each device's layer range; the links.
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".replica")) == 2)
    prefill = _text(driver, '.replica[data-replica="0"]')
    decoder = _text(driver, '.replica[data-replica="1"]')
    assert "PREFILL" in prefill and "cpu0" in prefill and "[0,30)" in prefill
    assert "DECODER" in decoder and "[0,12)" in decoder and "[12,30)" in decoder and "batch 0 / 4" in decoder
    assert _text(driver, '#cluster-svg [data-device="cpu2"]') == "cpu2\n2.0 GiB · 0.10 TF"
    assert "100 Mbit/s, 2.0 ms" in driver.find_element(By.ID, "cluster-svg").text
    assert "plan started" in _text(driver, "#events")
    assert _text(driver, '.replica[data-replica="1"] [data-figure="generated"]') == "tokens decoded 0"
    assert _text(driver, '[data-figure="requests"] .value') == "0"

    # A chat message through the page's own chat box, streamed back.
    driver.find_element(By.ID, "chat-input").send_keys("What is the capital of France?")
    driver.find_element(By.ID, "chat-send").click()
    wait.until(lambda d: "Paris" in _text(d, ".msg.assistant"))
    assert "failed" not in _text(driver, ".msg.assistant")

    # The live figures follow: the request is counted, the decoder made tokens at some speed.
    wait.until(lambda d: _text(d, '[data-figure="requests"] .value') == "1")
    wait.until(
        lambda d: _text(d, '.replica[data-replica="1"] [data-figure="generated"]') != "tokens decoded 0"
    )
    rates = _text(driver, '.replica[data-replica="1"] .rates')
    assert "decode speed 15.0" in rates and "decode speed 15.0 –" not in rates  # observed, beside predicted
    shot = tmp_path / "dashboard.png"
    assert driver.save_screenshot(str(shot))
    if target := os.environ.get("E2LLM_DASHBOARD_SCREENSHOT"):
        shutil.copyfile(shot, target)

    # The page ran without a script error (the one expected failure: the first, key-less poll).
    logs = driver.get_log("browser")
    errors = [e["message"] for e in logs if e["level"] == "SEVERE" and "/v1/status" not in e["message"]]
    assert errors == []

    # The JSON behind it follows its schema and agrees with the page.
    body = httpx.get(f"{server}/v1/status", headers={"authorization": f"Bearer {KEY}"}, timeout=30).json()
    status = Status.model_validate(body)
    assert [r.role for r in status.replicas] == ["PREFILL", "DECODER"]
    assert status.replicas[1].generated_tokens > 0 and status.replicas[0].prompt_tokens > 0
    assert sum(status.totals.requests.values()) == 1
