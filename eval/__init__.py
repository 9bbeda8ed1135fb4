"""SuperGLUE tasks as text-to-text: loading, formatting, metrics. Never imports `trainer`."""
