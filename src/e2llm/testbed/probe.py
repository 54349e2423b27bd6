"""`python -m e2llm.testbed.probe ADDRESS TIMEOUT DEVICE...`: wait until Ray nodes advertise the
devices, print the advertised ones as JSON.

Run as its own process (with the testbed's token in its environment) so that the caller — `e2llm
testbed up`, or a test that has Ray initialised for something else — never becomes a Ray driver.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from e2llm.runtime.cluster import RESOURCE_PREFIX


def alive_devices() -> set[str]:
    import ray

    return {
        key.removeprefix(RESOURCE_PREFIX)
        for node in ray.nodes()
        if node.get("Alive")
        for key in node.get("Resources", {})
        if key.startswith(RESOURCE_PREFIX)
    }


def main(argv: list[str]) -> int:
    import ray

    address, timeout_s, wanted = argv[0], float(argv[1]), set(argv[2:])
    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    deadline = time.monotonic() + timeout_s
    alive = alive_devices()
    while not wanted <= alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = alive_devices()
    ray.shutdown()
    print(json.dumps(sorted(alive)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
