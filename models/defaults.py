"""Inference defaults the service's configuration shares, kept free of torch so that reading the
settings (job queues, workers, tests) does not import it."""

# Queries decoded per chunk at inference: bounds peak memory independently of the output size
# (SRNO/AnySR: 128 MiB of lifted queries at full width). An output that fits one chunk decodes in
# one pass, a larger one in blocks+1 (`GalerkinSR.decode_image`): with 131,072 rather than 65,536,
# AnySR's half-width subnet decodes 128² → 512² in one pass, in 0.67–0.81 of the time (one
# thread).
DEFAULT_MAX_QUERIES = 131072
