"""ElasticSR HTTP service: API, per-request controller, job queue and metrics.

Imports `models`; `models` never imports this package.
"""
