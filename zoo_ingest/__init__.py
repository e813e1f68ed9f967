"""zoo_ingest package."""
