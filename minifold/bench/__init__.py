"""Benchmarks behind `make bench`: each module has `run(quick) -> dict` and `markdown(dict) -> str`."""
