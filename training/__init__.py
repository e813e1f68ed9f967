"""training: the distributed trainer. `training.main(cfg)` trains one metanetwork on a weight table."""

from training.config import ConfigError, TrainConfig, load_config


def main(cfg: TrainConfig):
    """Train `cfg.model` on `cfg.data.table` with DeepSpeed on Ray Train workers (see training.driver)."""
    from training.driver import main as _main

    return _main(cfg)


__all__ = ["ConfigError", "TrainConfig", "load_config", "main"]
