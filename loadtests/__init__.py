"""Benchmarks for Atalaya's services (`python -m loadtests.bench`, `make bench`).

Services run as real processes on 127.0.0.1 and are called over gRPC with the
project's client; every figure is printed as one JSON line, next to a baseline
measured in the same run."""
