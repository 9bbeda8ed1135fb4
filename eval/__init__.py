"""SuperGLUE as text-to-text: loading, formatting, metrics, few-shot sampling, dev splits and the
results table. Never imports `trainer` (the trainer depends on this package, not the reverse)."""
