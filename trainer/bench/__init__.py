"""Benchmarks, kept apart from the library: each module measures `lrpt` itself and prints ratios
measured in one run. `lrpt bench` is throughput.py; the others run as `python -m lrpt.trainer.bench.<name>`."""
