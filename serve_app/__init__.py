"""servefleet: LLM serving on Ray Serve and vLLM."""
