"""The relay's benchmark suite: our load generator, scenarios, a runner and the report.

Run it with `python -m bench` (or `make bench`); `python -m bench --help` lists the options.
"""
