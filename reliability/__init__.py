"""Reliability and security checks of the service and the attacker (issue 12): `make reliability`.

Each check returns a `CheckResult` with its figures; `python -m reliability` runs them all and
prints one summary line per check. The unit tests run the same checks at a small scale.
"""
