"""Load generation against a live OpenAI-compatible server (`e2llm bench`)."""
