"""Use cases, the seed-compatible facade, the reference API server and the CLI."""
