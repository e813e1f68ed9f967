"""`metazoo benchmark` on a tiny table: 2 families x 2 seeds as concurrent Ray Tune trials, rerun skip,
a failing family, the MLflow parent/child structure, and bad input refused before any trial starts."""

import json
from pathlib import Path

import pytest

from cluster.benchmark import main
from cluster.benchmark_config import BenchmarkConfig
from training.config import ConfigError, load_config

pytestmark = pytest.mark.ray

TINY = Path(__file__).resolve().parents[2] / "configs" / "benchmark-tiny.yaml"


def _cfg(tmp_path, table, *extra):
    # a relative tracking URI (as the embedded default sqlite:///mlflow.db is), resolved in the benchmark's
    # directory (the tests chdir to tmp_path): the trials, which run in Tune's folders, must log there too
    return load_config(TINY, ["store=store", f"table={table}", "train.epochs=1",
                              "tracking_uri=sqlite:///mlflow.db", *extra], cls=BenchmarkConfig)


def test_bad_input_is_refused_before_any_trial(ray_local, digits_cnn_table, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for override, key in [("seeds=[]", "seeds"), ("seeds=[0, 1, 0]", "seeds"),
                          ("trials.max_concurrent=0", "trials.max_concurrent"),
                          ("families=[{label: a, model: statnet}, {label: a, model: hnp}]", "families"),
                          ("families=[{label: a, model: statnet, seeds: []}]", "families.0.seeds"),
                          ("families=[{label: a, model: statnet, seeds: [2, 2]}]", "families.0.seeds"),
                          ("families=[{label: a, model: statnet, seed: [2]}]", "families.0.seed")]:
        with pytest.raises(ConfigError, match=key):
            _cfg(tmp_path, digits_cnn_table, override)
    with pytest.raises(ConfigError, match="trials.workers_per_trial"):
        main(_cfg(tmp_path, digits_cnn_table, "trials.workers_per_trial=64"), progress=False)
    with pytest.raises(ConfigError, match="trials.gpus_per_worker"):
        main(_cfg(tmp_path, digits_cnn_table, "trials.gpus_per_worker=1"), progress=False)
    with pytest.raises(ConfigError, match=r"family 'statnet'.*'data.activation'.*sine"):
        main(_cfg(tmp_path, digits_cnn_table, "zoo.activation=sine"), progress=False)
    assert not (tmp_path / "store" / "benchmark").exists()  # nothing ran, nothing was written


@pytest.mark.ci  # about 2 minutes: CI runs it after the default suite (make test-ci)
def test_trials_run_concurrently_rerun_skips_and_failures_are_kept_apart(ray_local, digits_cnn_table, tmp_path,
                                                                         monkeypatch, capsys):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    out = main(_cfg(tmp_path, digits_cnn_table), progress=False)
    text = capsys.readouterr().out
    recs = out["records"]
    assert [(r["family"], r["seed"], r["status"]) for r in recs] == [
        ("statnet", 0, "ok"), ("statnet", 1, "ok"), ("monomial_nfn", 0, "ok"), ("monomial_nfn", 1, "ok")]
    assert text.count(": started") == 4 and text.count(": finished in") == 4
    assert "Configuration for experiment" not in text and "Trial status" not in text  # Tune's tables are off
    assert "no established difference" in text or "is higher than" in text or "is lower than" in text
    # at least two trials overlapped in time (2 may run at once)
    spans = sorted((r["started"], r["finished"]) for r in recs)
    assert any(b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:])
    report = Path(out["report"]["markdown"])
    assert report.read_text().startswith("# digits-cnn") and (report.parent / "metric_vs_scale.png").exists()
    summary = json.loads((report.parent / "summary.json").read_text())["summary"]
    assert summary["references"] == {"monomial_nfn": ["monomial_nfn"]}
    assert summary["stats"]["statnet"]["no action"]["n"] == 2

    # MLflow: one parent run holding the report; every trial's run is its child, tagged family and seed
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(out["parent_run_id"])
    assert parent.data.tags["metazoo.kind"] == "benchmark" and parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "benchmark")} >= {
        "benchmark/summary.md", "benchmark/summary.json", "benchmark/config.yaml", "benchmark/metric_vs_scale.png",
        "benchmark/paired_differences.png"}
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted((c.data.tags["metazoo.family"], c.data.tags["metazoo.seed"]) for c in children) == [
        ("monomial_nfn", "0"), ("monomial_nfn", "1"), ("statnet", "0"), ("statnet", "1")]
    assert {c.info.run_id for c in children} == {r["run_id"] for r in recs}
    for c in children:  # evaluation is logged into the child run
        assert "test_kendall_tau" in c.data.metrics and c.data.metrics["epochs_run"] == 1
        # two trials at once on 4 logical CPUs: each reads with half of the 2 CPUs their workers leave free
        assert (c.data.params["data.read_cpus"], c.data.params["data.read_object_store_fraction"]) == ("1.0", "0.25")

    # rerun with a family whose worker dies (fault injection, no restarts) on its own seed 3: completed
    # trials are skipped, the failure is reported, the others' results are kept
    broken = ("families=[{label: statnet, model: statnet}, {label: monomial_nfn, model: monomial_nfn, "
              "kwargs: {hidden: 4}}, {label: broken, model: statnet, seeds: [3], train: {fault: {fail_at_epoch: 0}, "
              "checkpoint: {max_failures: 0}}}]")
    again = main(_cfg(tmp_path, digits_cnn_table, broken), progress=False)
    text = capsys.readouterr().out
    assert "3 families, seeds [0, 1, 3] (set per family) = 5 trials; 4 already complete, 1 to run" in text
    assert text.count(": started") == 1
    by = {(r["family"], r["seed"]): r for r in again["records"]}
    assert sorted(by) == [("broken", 3), ("monomial_nfn", 0), ("monomial_nfn", 1), ("statnet", 0), ("statnet", 1)]
    assert all(by[(f, s)]["run_id"] == r["run_id"] for r in recs for f, s in [(r["family"], r["seed"])])
    assert by[("broken", 3)]["status"] == "failed" and by[("broken", 3)]["error"] and again["report"]["failed"] == 1
    assert "trial broken seed 3: FAILED after" in text and "- broken seed 3: " in text  # console line, report
    assert again["summary"]["seeds"] == [0, 1, 3]
    assert again["parent_run_id"] == out["parent_run_id"]  # the same benchmark, the same parent run

    # a benchmark that stops on an error (here its report step) marks its parent run FAILED, not RUNNING,
    # with the trial runs it leaves RUNNING (Ray Tune kills a stopped trial's process; a stand-in run here),
    # and a rerun reopens the same parent
    import cluster.benchmark_output

    orphans = []

    def orphan():
        return client.create_run(parent.info.experiment_id, run_name="orphan",
                                 tags={"mlflow.parentRunId": parent.info.run_id}).info.run_id

    def broken_report(*args, **kwargs):
        orphans.append(orphan())  # a trial run still RUNNING when the benchmark stops
        raise RuntimeError("report step broke")

    monkeypatch.setattr(cluster.benchmark_output, "write_report", broken_report)
    with pytest.raises(RuntimeError, match="report step broke"):
        main(_cfg(tmp_path, digits_cnn_table), progress=False)
    assert client.get_run(out["parent_run_id"]).info.status == "FAILED"
    assert client.get_run(orphans[0]).info.status == "FAILED"
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    # a rerun reopens the parent; a trial run an earlier run of it left RUNNING (its process gone) is KILLED
    orphans.append(orphan())
    assert main(_cfg(tmp_path, digits_cnn_table), progress=False)["parent_run_id"] == out["parent_run_id"]
    assert "marked 1 trial run(s) of an earlier, stopped run of this benchmark KILLED" in capsys.readouterr().out
    assert client.get_run(out["parent_run_id"]).info.status == "FINISHED"
    assert [client.get_run(r).info.status for r in orphans] == ["FAILED", "KILLED"]

