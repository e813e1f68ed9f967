"""`metazoo pipeline`: all stages end to end on a tiny zoo, stages skipped on a rerun, fast failures."""

import json
import time

import pytest

from cluster.pipeline import run_pipeline
from cluster.pipeline_config import PipelineConfig
from training.config import ConfigError, load_config

pytestmark = pytest.mark.ray


def _cfg(tmp_path, *extra):
    return load_config(None, [
        f"store={tmp_path / 'store'}", "zoo.name=digits-cnn", "zoo.n=20", "zoo.activation=relu",
        "families=[{label: statnet, model: statnet}, {label: quasi_shared, model: monomial_nfn_quasi, "
        "kwargs: {hidden: 4, alpha_mode: shared}}]",
        "train={epochs: 1, batch_size: 16, scaling: {num_workers: 2}, mlflow: {system_metrics: false}}",
        "eval={scales: [1, 3], audit_samples: 2, audit_networks: 16}",
        f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", *extra,
    ], cls=PipelineConfig)


def test_pipeline_runs_every_stage_then_skips_them(ray_local, tmp_path, capsys, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # default artifact location ./mlartifacts lands here
    out = run_pipeline(_cfg(tmp_path), progress=False)
    text = capsys.readouterr().out
    for stage in ("generate digits-cnn", "ingest", "train statnet", "evaluate quasi_shared", "compare"):
        assert stage in text
    assert "mlflow ui --backend-store-uri sqlite:///" in text and "comparison.md" in text
    report = (tmp_path / "store" / "reports" / "digits-cnn" / "comparison.md").read_text()
    assert "| statnet |" in report and "| quasi_shared |" in report and "U[1,10^3]" in report
    assert all((tmp_path / "store" / "reports" / "digits-cnn" / f).exists()
               for f in ("metric_vs_scale.png", "predictions.png"))
    # the shared-alpha quasi model is exactly invariant (DESIGN fact 1); statnet is not scale-invariant
    assert out["results"]["quasi_shared"]["audit"]["max"] < 1e-9
    assert out["results"]["statnet"]["audit"]["max"] > 1e-3
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("metazoo-digits-cnn-generalization")
    first = client.search_runs([exp.experiment_id])
    assert len(first) == 3  # two trainings and the comparison
    assert client.get_model_version_by_alias("metazoo-digits-cnn-generalization", "champion")

    started = time.monotonic()
    again = run_pipeline(_cfg(tmp_path), progress=False)
    text = capsys.readouterr().out
    assert text.count(": already done") == 4 and "nothing to do" in text and "0 trained now" in text
    assert {k: v["run_id"] for k, v in again["runs"].items()} == {k: v["run_id"] for k, v in out["runs"].items()}
    assert len(client.search_runs([exp.experiment_id])) == 4  # only a new comparison run
    assert time.monotonic() - started < 120
    state = json.loads((tmp_path / "store" / "pipeline" / "digits-cnn.json").read_text())
    assert set(state["train"]) == {"statnet", "quasi_shared"}


def test_pipeline_bad_input_fails_fast(tmp_path):
    started = time.monotonic()
    with pytest.raises(FileNotFoundError, match="zoo.uri"):
        run_pipeline(_cfg(tmp_path, f"zoo.uri={tmp_path / 'missing-zoo'}"), progress=False)
    with pytest.raises(ConnectionError, match="127.0.0.1:9"):
        run_pipeline(_cfg(tmp_path, "tracking_uri=http://127.0.0.1:9"), progress=False)
    with pytest.raises(ConfigError, match="optim.lrr"):
        _cfg(tmp_path, "train.optim.lrr=1").train_config(_cfg(tmp_path).families[0])
    with pytest.raises(ConfigError, match="families"):
        _cfg(tmp_path, "families=[]")
    with pytest.raises(ConfigError, match=r"'families.0.seeds': unknown key"):  # seeds are the benchmark's
        _cfg(tmp_path, "families=[{label: a, model: statnet, seeds: [1, 2]}]")
    assert time.monotonic() - started < 30
    assert not (tmp_path / "store").exists()


def test_zoo_options_reach_the_generator(tmp_path, monkeypatch):
    """`zoo.options` (digits-cnn: activation) are the generator's options; a bad one is the generator's error."""
    from cluster.pipeline import build_table
    from zoo_ingest import generate as generate_module

    seen = {}

    class Stop(Exception):
        pass

    def fake_generate(zoo, out, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(generate_module, "generate", fake_generate)
    cfg = PipelineConfig.model_validate({"store": str(tmp_path),
                                         "zoo": {"name": "digits-cnn", "n": 4, "options": {"activation": "relu"}},
                                         "families": [{"label": "s", "model": "statnet"}]})
    with pytest.raises(Stop):
        build_table(cfg, lambda title: None, progress=False)
    assert seen["options"] == {"activation": "relu"}
