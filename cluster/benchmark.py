"""`metazoo benchmark`: every (family, seed) pair as a Ray Tune trial, then statistics over seeds.

Stages: the table (generated and ingested as the pipeline does, or an existing `table`), checks that need
no trial (cluster resources, architectures, configs), one MLflow parent run, the pending trials run by
Ray Tune (concurrently as `trials.max_concurrent` and the cluster allow), the report.

Each trial's record is stored under `<store>/benchmark/<folder>/trials/<key>.json`, keyed by a hash of
everything that decides its result (table fingerprint, resolved training config with its seed, evaluation
settings): a rerun skips completed trials and retries failed ones.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from cluster.benchmark_config import BenchmarkConfig
from cluster.benchmark_trial import read_records, run_trial
from cluster.pipeline import _hash, build_table, check_services
from training.config import ConfigError, resolve_tracking_uri


def _location(cfg: BenchmarkConfig):
    from zoo_ingest.storage import Location

    # absolute: the trials write their records from Tune's trial folders, not from this directory
    return Location(_absolute(cfg.store).rstrip("/")).child(f"benchmark/{cfg.folder}")


def _report_dir(cfg: BenchmarkConfig) -> Path:
    base = cfg.store if "://" not in cfg.store else ".metazoo"
    return (Path(base) / "benchmark" / cfg.folder / "report").resolve()


def _absolute(uri: str) -> str:
    return uri if "://" in uri else str(Path(uri).expanduser().resolve())


def check_resources(cfg: BenchmarkConfig) -> dict:
    """A trial must fit on the cluster; errors name the `trials.` key. Returns the cluster's resources."""
    import ray

    have = ray.cluster_resources()
    t = cfg.trials
    cpus, gpus = have.get("CPU", 0), have.get("GPU", 0)
    if t.workers_per_trial * t.cpus_per_worker > cpus:
        raise ConfigError(f"'trials.workers_per_trial' x 'trials.cpus_per_worker' = {t.workers_per_trial} x "
                          f"{t.cpus_per_worker:g} CPUs per trial, but the Ray cluster has {cpus:g} CPUs")
    if t.gpus_per_worker and t.workers_per_trial * t.gpus_per_worker > gpus:
        raise ConfigError(f"'trials.gpus_per_worker': {t.workers_per_trial} x {t.gpus_per_worker:g} GPUs per "
                          f"trial, but the Ray cluster has {gpus:g} GPUs")
    return have


def read_share(cfg: BenchmarkConfig, cluster_cpus: float, running: int) -> dict:
    """The training-data limits of each of `running` trials at once (`train.data` keys): an equal share of
    the CPUs their workers leave free (at least 1) and of the object store fraction one Ray Data executor
    takes by default (0.5). Without them, each trial's reads plan for all of it and one trial's stream
    can starve another's (docs/results.md, "Data wait at the 30,000-network zoo"). {} for one trial, or
    with `trials.share_reads: false`."""
    if running <= 1 or not cfg.trials.share_reads:
        return {}
    t = cfg.trials
    spare = cluster_cpus - running * t.workers_per_trial * t.cpus_per_worker
    return {"read_cpus": max(1.0, spare / running), "read_object_store_fraction": 0.5 / running}


def _table(cfg: BenchmarkConfig, progress: bool) -> str:
    """The table's fingerprint: an existing complete `table` is used as it is; otherwise generate/ingest."""
    from zoo_ingest import open_table

    if cfg.table:
        try:
            table = open_table(cfg.table)
        except Exception:
            table = None
        if table is not None:
            print(f"\nweight table {cfg.table}: {table.card['rows']} rows (used as it is)", flush=True)
            return _hash({"table": cfg.table_uri(), "fingerprint": table.card.get("fingerprint"),
                          "archs": table.row_counts})
    return build_table(cfg, lambda title: print(f"\n{title}", flush=True), progress)


def _check_architectures(cfg: BenchmarkConfig, trial_cfgs: dict) -> str:
    """Every family must find its architecture in the table (and build for it). Returns the zoo name."""
    from training.driver import prepare

    zoo = None
    for family in cfg.families:
        tcfg = trial_cfgs[(family.label, cfg.family_seeds(family)[0])]
        try:
            table, *_ = prepare(tcfg)
        except ConfigError as exc:
            hint = " (set zoo.activation or train.data.arch)" if "'data." in str(exc) else ""
            raise ConfigError(f"family {family.label!r}: {exc}{hint}") from None
        zoo = table.zoo
    return zoo


def trial_key(table_fp: str, tcfg, eval_settings: dict) -> str:
    # settings left at their defaults are not hashed, so a new config field (added with a default that
    # keeps today's behaviour) does not invalidate trials that are already complete
    train = tcfg.model_dump(mode="json", exclude_defaults=True)
    train.get("mlflow", {}).pop("parent_run_id", None)  # which benchmark run is parent does not change a result
    train.pop("run_name", None)
    for key in ("read_cpus", "read_object_store_fraction"):  # how reads share the cluster, not what they read
        train.get("data", {}).pop(key, None)
    return _hash({"table": table_fp, "train": train, "eval": eval_settings})


def main(cfg: BenchmarkConfig, progress: bool = True) -> dict:
    from zoo_ingest.ray_runtime import ensure_ray

    started = time.perf_counter()
    check_services(cfg)
    tracking_uri = resolve_tracking_uri(cfg.tracking_uri)
    trial_cfgs = {(f.label, s): cfg.trial_config(f, s) for f in cfg.families for s in cfg.family_seeds(f)}
    ensure_ray()
    cluster = check_resources(cfg)
    table_fp = _table(cfg, progress)
    zoo = _check_architectures(cfg, trial_cfgs)

    eval_settings = cfg.eval.model_dump(mode="json")
    models = {f.label: f.model for f in cfg.families}
    trials_loc = _location(cfg).child("trials")
    keys = {pair: trial_key(table_fp, tcfg, eval_settings) for pair, tcfg in trial_cfgs.items()}
    done = {k for k, r in read_records(trials_loc, keys.values()).items() if r.get("status") == "ok"}
    pending = [pair for pair, k in keys.items() if k not in done]
    if all(f.seeds is None for f in cfg.families):
        shape = f"{len(cfg.families)} families x {len(cfg.seeds)} seeds"
    else:  # some families run their own seeds
        shape = f"{len(cfg.families)} families, seeds {cfg.all_seeds()} (set per family)"
    print(f"\nbenchmark: {shape} = {len(keys)} trials; "
          f"{len(keys) - len(pending)} already complete, {len(pending)} to run, at most "
          f"{cfg.trials.max_concurrent} at once", flush=True)

    first = trial_cfgs[pending[0] if pending else next(iter(trial_cfgs))]
    parent = None
    if first.mlflow.enabled:
        from cluster.benchmark_mlflow import parent_run

        parent = parent_run(cfg, first, zoo, tracking_uri, _location(cfg))
    specs = {}
    share = read_share(cfg, cluster.get("CPU", 0), min(cfg.trials.max_concurrent, len(pending)))
    for pair in pending:
        tcfg = trial_cfgs[pair].model_copy(deep=True)
        for key, value in share.items():  # after the trial keys: how the reads share the cluster is not a result
            if getattr(tcfg.data, key) is None:
                setattr(tcfg.data, key, value)
        tcfg.data.table = _absolute(tcfg.data.table)
        tcfg.checkpoint.storage_path = _absolute(tcfg.checkpoint.storage_path)
        # the trial's driver runs in Tune's trial folder: a relative (or defaulted) tracking URI would name
        # another database there, so every trial gets the benchmark's resolved one
        tcfg.mlflow.tracking_uri = tracking_uri
        if parent:
            tcfg.mlflow.parent_run_id = parent["run_id"]
            tcfg.mlflow.experiment = parent["experiment"]
        specs[keys[pair]] = {"family": pair[0], "model": models[pair[0]], "seed": pair[1],
                             "train": tcfg.model_dump(mode="json"), "eval": eval_settings,
                             "table": _absolute(cfg.table_uri()), "tracking_uri": tracking_uri,
                             "trials": trials_loc}
    try:
        tune_errors = run_trials(cfg, specs) if specs else {}

        records = read_records(trials_loc, keys.values())
        out = []
        for (label, seed), key in keys.items():
            r = records.get(key)
            if r is None or (key in tune_errors and r.get("status") != "ok"):
                r = {"key": key, "family": label, "model": models[label], "seed": seed, "status": "failed",
                     "error": (r or {}).get("error") or tune_errors.get(key, "the trial did not finish")}
            out.append(r)
        from cluster.benchmark_output import write_report

        report = write_report(cfg, out, parent, tracking_uri, _report_dir(cfg), time.perf_counter() - started)
    except BaseException as exc:  # the parent run must not stay RUNNING; a rerun reopens it (parent_run)
        if parent:
            from cluster.benchmark_mlflow import end_parent
            from training.tracking import ended_status

            end_parent(tracking_uri, parent["run_id"], ended_status(exc))
        raise
    return {"records": out, "summary": report["summary"], "report": report,
            "parent_run_id": parent["run_id"] if parent else None, "table": cfg.table_uri(), "keys": keys}


def run_trials(cfg: BenchmarkConfig, specs: dict) -> dict[str, str]:
    """Run the trials with Ray Tune; returns {key: error} for trials Tune saw fail."""
    import os

    from ray import tune

    from cluster.benchmark_output import TrialLines

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Tune's newer console prints its own boxes even at verbose=0

    # the trial's own process only waits on its Ray Train run, whose workers reserve the CPUs: it reserves
    # next to nothing, so that `max_concurrent` 1-worker trials fit on a small machine
    trainable = tune.with_resources(tune.with_parameters(run_trial, specs=specs), {"cpu": 0.001})
    tune_dir = _report_dir(cfg).parent / "tune"
    tuner = tune.Tuner(
        trainable,
        param_space={"key": tune.grid_search(list(specs))},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.trials.max_concurrent, reuse_actors=False),
        run_config=tune.RunConfig(
            name=f"benchmark-{cfg.folder}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(tune_dir),
            verbose=0, callbacks=[TrialLines(specs)], failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    grid = tuner.fit()
    errors = {}
    for res in grid:
        if res.error is not None:
            lines = str(res.error).strip().splitlines()
            errors[res.config["key"]] = f"{type(res.error).__name__}: {lines[-1] if lines else ''}"
    return errors


def resolved_config(cfg: BenchmarkConfig) -> str:
    import yaml

    return yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False)
