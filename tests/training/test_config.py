from pathlib import Path

import pytest

from training.config import ConfigError, TrainConfig, load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(ROOT.joinpath("configs").rglob("*.yaml"))


def test_there_are_shipped_configs_for_each_builtin_zoo():
    families = {p.parent.name for p in CONFIGS}
    assert ROOT / "configs" / "quickstart.yaml" in CONFIGS
    assert {"digits-cnn", "digits-siren"} <= families


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_loads_and_names_its_launch_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# metazoo ") and str(path.relative_to(ROOT)) in first
    if first.startswith("# metazoo benchmark"):
        from cluster.benchmark_config import BenchmarkConfig

        bench = load_config(path, cls=BenchmarkConfig)
        for family in bench.families:  # every trial's training config validates too
            for seed in bench.seeds:
                tcfg = bench.trial_config(family, seed)
                assert tcfg.model.name == family.model and tcfg.seed == seed
                assert tcfg.early_stopping.patience is not None  # benchmarks train to convergence
        return
    if first.startswith("# metazoo pipeline"):
        from cluster.pipeline_config import PipelineConfig

        pipeline = load_config(path, cls=PipelineConfig)
        for family in pipeline.families:  # each family's training config validates too
            assert pipeline.train_config(family).model.name == family.model
        return
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)
    # the model and its kwargs build for the zoo's architecture
    from metanets import NetworkSpec, build_model
    from tests.metanets.reference_nets import Siren, SmallCNN

    if path.parent.name == "digits-transformer":
        from metanets import infer_spec
        from zoo_ingest.generate import build_digits_transformer

        spec = infer_spec(build_digits_transformer(num_layers=2).state_dict(), "relu")
    else:
        net, activation = (SmallCNN(), "relu") if path.parent.name == "digits-cnn" else (Siren(), "sine")
        spec = NetworkSpec.from_state_dict(net.state_dict(), activation=activation)
    assert build_model(cfg.model.name, spec, **cfg.model.kwargs).num_params > 0


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match=r"'model.nmae': unknown key"):
        load_config(None, ["data.table=t", "model.nmae=hnp"])
    with pytest.raises(ConfigError, match=r"'epochs'"):
        load_config(None, ["data.table=t", "epochs=0"])
    with pytest.raises(ConfigError, match=r"'data'"):
        load_config(None, ["epochs=3"])  # data.table is required


def test_overrides_parse_yaml_values_and_nest(tmp_path):
    assert parse_overrides(["a.b=3", "a.c=[1, 2]", "d=x"]) == {"a": {"b": 3, "c": [1, 2]}, "d": "x"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])
    path = tmp_path / "c.yaml"
    path.write_text("data: {table: t}\nepochs: 4\nmodel: {name: hnp, kwargs: {hidden: 8}}\n")
    cfg = load_config(path, ["epochs=2", "model.kwargs.hidden=4"])
    assert cfg.epochs == 2 and cfg.model.name == "hnp" and cfg.model.kwargs == {"hidden": 4}
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_classification_task_uses_cross_entropy():
    cfg = load_config(None, ["data.table=t", "task.kind=inr_classification"])
    assert cfg.task.loss == "ce"
    with pytest.raises(ConfigError, match="inr_classification"):
        load_config(None, ["data.table=t", "task.loss=ce"])


def test_training_split_is_cached_only_when_small_or_asked():
    from types import SimpleNamespace

    from training.driver import cache_training_split, keep_rows_in_workers

    spec = SimpleNamespace(num_params=1000)  # ~4.3 kB a row
    auto = load_config(None, ["data.table=t", "model.name=monomial_nfn"])
    assert cache_training_split(auto, spec, rows=1000, object_store_bytes=1e9)
    assert not cache_training_split(auto, spec, rows=1_000_000, object_store_bytes=1e9)
    never = load_config(None, ["data.table=t", "model.name=monomial_nfn", "data.cache=never"])
    assert not cache_training_split(never, spec, rows=10, object_store_bytes=1e9)
    always = load_config(None, ["data.table=t", "model.name=monomial_nfn", "data.cache=always"])
    assert cache_training_split(always, spec, rows=1_000_000, object_store_bytes=1e9)
    # workers keep their rows in their own memory only for a small split, and never with data.cache: never
    assert keep_rows_in_workers(auto, spec, rows=1000, object_store_bytes=1e9)
    assert not keep_rows_in_workers(auto, spec, rows=1_000_000, object_store_bytes=1e9)
    assert not keep_rows_in_workers(always, spec, rows=1_000_000, object_store_bytes=1e9)  # spills, not kept
    assert keep_rows_in_workers(always, spec, rows=1000, object_store_bytes=1e9)
    assert not keep_rows_in_workers(never, spec, rows=10, object_store_bytes=1e9)
    with pytest.raises(ConfigError, match="data.cache"):
        load_config(None, ["data.table=t", "model.name=monomial_nfn", "data.cache=sometimes"])


def test_read_limits_become_ray_data_resource_limits():
    from training.driver import read_limits

    inf = float("inf")
    base = ["data.table=t", "model.name=statnet"]
    free = read_limits(load_config(None, base), object_store_bytes=4e9)
    assert (free.cpu, free.gpu, free.object_store_memory, free.memory) == (inf, inf, inf, inf)  # Ray Data's default
    capped = read_limits(load_config(None, base + ["data.read_cpus=1.5", "data.read_object_store_fraction=0.25"]),
                         object_store_bytes=4e9)
    assert (capped.cpu, capped.gpu, capped.object_store_memory, capped.memory) == (1.5, inf, 1e9, inf)
    cpus_only = read_limits(load_config(None, base + ["data.read_cpus=1"]), object_store_bytes=4e9)
    assert (cpus_only.cpu, cpus_only.object_store_memory) == (1, inf)  # the store is not capped to 0
    for bad in ("data.read_cpus=0", "data.read_object_store_fraction=1.5"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, base + [bad])


def test_concurrent_benchmark_trials_share_the_reads():
    from cluster.benchmark import read_share, trial_key
    from cluster.benchmark_config import BenchmarkConfig

    cfg = BenchmarkConfig.model_validate({"families": [{"label": "s", "model": "statnet"}], "seeds": [0],
                                          "trials": {"max_concurrent": 2, "workers_per_trial": 1}})
    # 4 logical CPUs, two 1-CPU trials: the 2 CPUs left and Ray Data's half of the store, split in two
    assert read_share(cfg, cluster_cpus=4, running=2) == {"read_cpus": 1.0, "read_object_store_fraction": 0.25}
    assert read_share(cfg, cluster_cpus=2, running=2)["read_cpus"] == 1.0  # never below one task's CPU
    assert read_share(cfg, cluster_cpus=4, running=1) == {}  # one trial: Ray Data's own defaults
    cfg.trials.share_reads = False  # the user's choice: every trial's reads plan for the whole cluster
    assert read_share(cfg, cluster_cpus=4, running=2) == {}
    cfg.trials.share_reads = True
    # the share does not change a trial's identity: completed trials stay complete
    tcfg = cfg.trial_config(cfg.families[0], 0)
    shared = tcfg.model_copy(deep=True)
    shared.data.read_cpus, shared.data.read_object_store_fraction = 1.0, 0.25
    assert trial_key("fp", tcfg, {}) == trial_key("fp", shared, {})
