"""servelab: multi-tenant LLM gateway, vLLM-like simulator, load tests."""
