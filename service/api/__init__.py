"""HTTP routers, one per resource: `upscale`, `models`, `ops` (health, readiness, metrics)."""
