"""ElasticSR models: networks, tiers, training, evaluation and checkpoints (no web code)."""
