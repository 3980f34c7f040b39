"""How a candidate is scored: data sets, model loading, the exact rotary patch,
chunked long-context perplexity with exact early abort, and evaluator workers."""
