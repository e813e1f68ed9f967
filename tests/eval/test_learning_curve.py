"""The learning curve of a benchmark whose families set `train.data.train_networks`, checked by hand."""

import pytest

from cluster.pipeline_config import Family
from eval import learning_curve
from eval.benchmark_report import summarize_benchmark
from eval.stats import summarize


def _record(family, model, seed, clean):
    return {"family": family, "model": model, "seed": seed, "status": "ok", "wall_s": 5.0, "epochs_run": 3,
            "result": {"metric": "kendall_tau", "n": 10, "num_params": 7, "invariance_exact": True,
                       "clean": {"kendall_tau": clean}, "robustness": {}, "audit": {"max": 0.0}}}


def test_points_group_by_label_sort_by_size_and_carry_the_seed_statistics(tmp_path):
    families = [Family(label="statnet@300", model="statnet", train={"data": {"train_networks": 300}}),
                Family(label="statnet@100", model="statnet", train={"data": {"train_networks": 100}}),
                Family(label="hnp_small", model="hnp", train={"data": {"train_networks": 100}}),
                Family(label="monomial_nfn", model="monomial_nfn")]  # no size: not on a curve
    values = {"statnet@100": [0.50, 0.54, 0.52], "statnet@300": [0.60, 0.62, 0.64], "hnp_small": [0.4],
              "monomial_nfn": [0.58, 0.59, 0.60]}
    records = [_record(f.label, f.model, seed, v) for f in families for seed, v in enumerate(values[f.label])]
    summary = summarize_benchmark(records, [{"label": f.label, "model": f.model} for f in families], [0, 1, 2])
    sized = learning_curve.sized_families(families)
    assert [(f["curve"], f["train_networks"]) for f in sized] == [("statnet", 300), ("statnet", 100), ("hnp", 100)]
    curves = learning_curve.curves(summary, sized)
    assert list(curves) == ["statnet", "hnp"]
    assert [p["train_networks"] for p in curves["statnet"]] == [100, 300]
    small, big = curves["statnet"]
    by_hand = summarize([0.50, 0.54, 0.52])
    assert small["mean"] == pytest.approx(0.52) and small["lo"] == pytest.approx(by_hand["lo"])
    assert big["mean"] == pytest.approx(0.62) and big["values"] == {0: 0.60, 1: 0.62, 2: 0.64}
    text = learning_curve.markdown(curves, "kendall_tau")
    assert f"| statnet | 0.520 [{by_hand['lo']:.3f}, {by_hand['hi']:.3f}] (3) | 0.620 [" in text
    assert "| hnp | 0.400 (1) | not run |" in text and "monomial_nfn" not in text
    assert learning_curve.plot(curves, "kendall_tau", tmp_path / "c.png", "t").stat().st_size > 10_000


def test_the_benchmark_report_adds_the_curve(tmp_path):
    import yaml

    from cluster.benchmark_config import BenchmarkConfig
    from cluster.benchmark_output import write_report

    raw = yaml.safe_load(open("configs/benchmark-tiny.yaml"))
    raw["store"] = str(tmp_path / "store")
    raw["families"] = [{"label": f"statnet@{n}", "model": "statnet", "train": {"data": {"train_networks": n}}}
                       for n in (2, 4)]
    cfg = BenchmarkConfig.model_validate(raw)
    records = [_record(f"statnet@{n}", "statnet", seed, 0.1 * n + 0.01 * seed) for n in (2, 4) for seed in (0, 1)]
    report = write_report(cfg, records, None, "sqlite:///unused.db", tmp_path / "report", 1.0)
    names = sorted(p.rsplit("/", 1)[-1] for p in report["files"])
    assert {"learning_curve.png", "learning_curve.json"} <= set(names)
    text = (tmp_path / "report" / "summary.md").read_text()
    assert "## Learning curve" in text and "| statnet | 0.205 [" in text


def test_curve_labels_become_valid_mlflow_metric_names(tmp_path):
    from mlflow import MlflowClient

    from cluster.benchmark_mlflow import log_summary, metric_key

    assert metric_key("statnet@800") == "statnet_800" and metric_key("hnp_canon") == "hnp_canon"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("curve", artifact_location=str(tmp_path / "art")))
    records = [_record("statnet@800", "statnet", seed, v) for seed, v in enumerate([0.5, 0.6])]
    summary = summarize_benchmark(records, [{"label": "statnet@800", "model": "statnet"}], [0, 1])
    log_summary(uri, run.info.run_id, summary, [], 0)
    assert client.get_run(run.info.run_id).data.metrics["statnet_800.test_kendall_tau_mean"] == pytest.approx(0.55)


def test_curves_of_two_benchmarks_and_an_eval_result_make_one_curve(tmp_path, capsys):
    import json
    import math

    def point(n, value):
        return {"train_networks": n, "label": f"statnet@{n}", "n": 1, "mean": value, "std": math.nan,
                "lo": math.nan, "hi": math.nan, "values": {"0": value}, "epochs_run": [3], "wall_s": 1.0}

    small = tmp_path / "small.json"
    small.write_text(json.dumps({"statnet": [point(100, 0.5), point(300, 0.6)], "hnp": [point(100, 0.4)]}))
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"statnet": [point(1000, 0.7)]}))
    result = tmp_path / "eval.json"
    result.write_text(json.dumps({"metric": "kendall_tau", "clean": {"kendall_tau": 0.66, "r2": 0.1},
                                  "table": "t", "split": "test"}))
    out = tmp_path / "curve.png"
    assert learning_curve.main([str(out), str(small), str(big), "--eval", f"monomial_nfn@1000={result}"]) == 0
    text = capsys.readouterr().out
    assert "| statnet | 0.500 (1) | 0.600 (1) | 0.700 (1) |" in text
    assert "| hnp | 0.400 (1) | not run | not run |" in text
    assert "| monomial_nfn | not run | not run | 0.660 (1) |" in text
    assert out.stat().st_size > 10_000
    with pytest.raises(ValueError, match="two points at 1,000"):
        learning_curve.merge(json.loads(big.read_text()), json.loads(big.read_text()))
    with pytest.raises(ValueError, match="curve@training_networks"):
        learning_curve.point_from_eval("statnet", json.loads(result.read_text()))
    with pytest.raises(SystemExit):
        learning_curve.main([str(out), "--eval", f"statnet@5{result}"])
    assert "write it as curve@N=" in capsys.readouterr().err


def test_each_point_is_paired_with_the_reference_of_its_own_size():
    families = [{"label": "statnet@100", "model": "statnet"}, {"label": "monomial_nfn@100", "model": "monomial_nfn"},
                {"label": "statnet@300", "model": "statnet"}, {"label": "monomial_nfn@300", "model": "monomial_nfn"},
                {"label": "hnp@300", "model": "hnp"}, {"label": "statnet@50", "model": "statnet"}]
    values = {"statnet@100": [0.50, 0.54, 0.52], "monomial_nfn@100": [0.40, 0.41, 0.45],
              "statnet@300": [0.60, 0.62, 0.64], "monomial_nfn@300": [0.70], "hnp@300": [0.66, 0.9],
              "statnet@50": [0.3]}
    records = [_record(f["label"], f["model"], seed, v) for f in families
               for seed, v in enumerate(values[f["label"]])]
    summary = summarize_benchmark(records, families, [0, 1, 2])
    paired = summary["paired"]
    assert summary["references"] == {"monomial_nfn": ["monomial_nfn@100", "monomial_nfn@300"]}
    # no reference at 50 networks: statnet@50 is not paired with a reference of another size
    assert {ref: list(rows) for ref, rows in paired.items()} == {
        "monomial_nfn@100": ["statnet@100"], "monomial_nfn@300": ["statnet@300", "hnp@300"]}
    small = paired["monomial_nfn@100"]["statnet@100"]["no action"]  # d = [0.10, 0.13, 0.07]
    assert small["mean"] == pytest.approx(0.10) and small["n"] == 3 and small["wins"] == 3
    big = paired["monomial_nfn@300"]["statnet@300"]["no action"]  # the one seed both ran: d = -0.10
    assert big["seeds"] == [0] and big["mean"] == pytest.approx(-0.10)
    assert paired["monomial_nfn@300"]["hnp@300"]["no action"]["mean"] == pytest.approx(-0.04)


def test_eval_results_of_several_seeds_make_one_point_with_an_interval(tmp_path, capsys):
    import json

    from eval.stats import summarize

    paths = {}
    for seed, value in [(0, 0.70), (1, 0.72), (2, 0.71)]:
        paths[seed] = tmp_path / f"seed{seed}.json"
        paths[seed].write_text(json.dumps({"metric": "kendall_tau", "clean": {"kendall_tau": value},
                                           "table": "t10k", "split": "test"}))
    out = tmp_path / "curve.png"
    args = [str(out)] + [a for seed in (2, 0, 1) for a in ("--eval", f"statnet@24000:{seed}={paths[seed]}")]
    assert learning_curve.main(args) == 0
    want = summarize([0.70, 0.72, 0.71])
    assert f"| statnet | 0.710 [{want['lo']:.3f}, {want['hi']:.3f}] (3) |" in capsys.readouterr().out
    pooled = learning_curve.pool_seeds(
        [learning_curve.point_from_eval("statnet@24000", json.loads(paths[s].read_text()), s)[1] for s in (1, 0)])
    assert pooled["values"] == {"0": 0.70, "1": 0.72} and pooled["n"] == 2
    assert pooled["mean"] == pytest.approx(0.71) and pooled["lo"] < 0.70 < 0.72 < pooled["hi"]
    # the same seed twice, a seed that is not a number, results scored on different tables: refused
    with pytest.raises(SystemExit):
        learning_curve.main([str(out), "--eval", f"statnet@24000:1={paths[1]}",
                             "--eval", f"statnet@24000:1={paths[2]}"])
    assert "two results for seed 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        learning_curve.main([str(out), "--eval", f"statnet@24000:one={paths[1]}"])
    assert "curve@N:seed=" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"metric": "kendall_tau", "clean": {"kendall_tau": 0.6}, "table": "t30k",
                                 "split": "test"}))
    with pytest.raises(SystemExit):
        learning_curve.main([str(out), "--eval", f"statnet@24000:0={paths[0]}",
                             "--eval", f"statnet@24000:1={other}"])
    assert "scored on different data" in capsys.readouterr().err
