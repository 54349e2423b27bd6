"""e2llm: plan, simulate and serve one LLM over heterogeneous edge/fog devices."""

__version__ = "0.1.0"
