"""The live server the API test modules share (`conftest.api_server`): its plan, model and key."""

from __future__ import annotations

API_MODEL = "smollm2-135m"
API_KEY = "test-key-123"
# The KV goes from a 1-stage PREFILL replica to a 2-stage DECODER replica.
API_PLAN = {
    "system": "test",
    "model": API_MODEL,
    "objective": 0.0,
    "replicas": [
        {"id": 0, "role": "PREFILL", "devices": [{"name": "cpu0", "layers": [0, 30]}]},
        {
            "id": 1,
            "role": "DECODER",
            "concurrency": 4,
            "devices": [{"name": "cpu1", "layers": [0, 12]}, {"name": "cpu2", "layers": [12, 30]}],
        },
    ],
}
