"""Builders that the tests and the benchmarks share, importable as `churn_platform.testing.*`.

Shipped with the project as libraries ship a `testing` module, so a benchmark
imports them without touching `sys.path`. Nothing of the platform's runtime
imports this package (a test checks it), and importing a module here does no
work: each one only defines things.

- `lakes`: events (rows and message values) and raw event lakes written without
  Kafka: simulated, hand-built, a replayed catalogue, extract-like commits.
- `public_data`: CDNOW_master.txt and how it maps onto the event contract.
- `postgres`: a throwaway PostgreSQL cluster (Debian's binaries, a temporary
  directory, a loopback port).
- `deployment`: the three processes of a deployment (code server, webserver,
  daemon) started as docs/deployment.md says.
- `faults`: producing with recorded offsets, the extract in a killable child
  process, and the exactly-once checks of the fault tests and the soak.
- `serving`: a champion registered ungated, and the `churn-platform serve` command line.
- `topics`: what a Kafka topic holds, read from the start to the end.

pytest fixtures stay in the tests' conftest.py files.
"""
