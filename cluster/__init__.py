"""metazoo CLI and pipeline orchestration."""
