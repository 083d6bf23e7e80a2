"""Locust load tests over gRPC streaming, with LLM latency metrics.

`locustfile.py` holds the users, the load shape and the event hooks (it imports
locust, which monkey-patches the process with gevent: import it only inside a
Locust run). Everything else here is plain Python that tests import directly:
`metrics` (TTFT, TPOT, ITL, E2E, SLOs and goodput), `settings`, `shapes`,
`prompts`, `report` and `run` (the `make loadtest` driver).
"""
