"""Evaluation harness: a JSONL data set with ground truth, a run of every item
through the gateway, deterministic scorers and an LLM judge, reports (CSV, HTML,
JSON), A/B comparison, a regression gate and judge calibration.

`atalaya eval` (services.eval.cli) is the entry point; services/eval/README.md
documents the data set format and the CI use."""
