"""What drives both sides at once: the demo now, the experiments later.

The only package (with `benchmarks`) allowed to import the attacker and the victim service
together; the import-linter contracts in pyproject.toml keep the other layers one-way.
"""
