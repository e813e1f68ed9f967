"""Evaluation: task metric, robustness under group actions, the invariance audit, scoring checkpoints."""

import json

import numpy as np
import pytest
import torch

from eval.api import ArchitectureMismatch, evaluate_model
from eval.compare import markdown_table
from eval.evaluate import evaluate, orbit_conditions
from eval.loading import ModelNotFound, load_model
from eval.report import result_table
from eval.score import score
from metanets import NetworkSpec, WeightSpace, build_model
from tests.metanets.reference_nets import Siren, SmallCNN, random_state_dicts
from training.model_io import make_card, save_metanet


def _synthetic(n=24, seed=0):
    sds = random_state_dicts(SmallCNN, n, seed)
    spec = NetworkSpec.from_state_dict(sds[0], activation="relu")
    ws = WeightSpace.from_state_dicts(sds, spec)
    gen = torch.Generator().manual_seed(seed)
    return spec, ws, torch.rand(n, generator=gen)


def _model(name, spec, **kw):
    torch.manual_seed(0)
    model = build_model(name, spec, hidden=4, **kw) if name != "statnet" else build_model(name, spec)
    return model.eval(), make_card(name, dict(kw, **({} if name == "statnet" else {"hidden": 4})), spec,
                                   task="generalization", loss="bce", target="test_accuracy")


def test_orbit_conditions_follow_the_group():
    assert list(orbit_conditions("perm_scale")) == ["permuted", "U[1,10^1]", "U[1,10^2]", "U[1,10^3]", "U[1,10^4]"]
    assert list(orbit_conditions("perm_sign")) == ["permuted", "signs"]


def test_scale_metric_names_say_the_range_and_old_names_still_read():
    from eval.report import canonical_metric_name, flat_metrics, metric_suffix, run_metrics

    assert [metric_suffix(c) for c in orbit_conditions("perm_scale")] == [
        "permuted", "U1_1e1", "U1_1e2", "U1_1e3", "U1_1e4"]
    assert metric_suffix("GL cond<=10") == "GL_cond_le_10"
    result = {"clean": {"kendall_tau": 0.5}, "robustness": {"U[1,10^3]": {"kendall_tau": 0.4}},
              "audit": {"max": 0.0, "mean": 0.0}}
    assert "test_kendall_tau_U1_1e3" in flat_metrics(result)
    # runs logged before the rename: U[1,10^3] was `_U1_10e3`
    assert canonical_metric_name("test_kendall_tau_U1_10e3") == "test_kendall_tau_U1_1e3"
    assert canonical_metric_name("test_r2_U1_1e3") == "test_r2_U1_1e3"
    old = {"test_kendall_tau": 0.5, "test_kendall_tau_U1_10e1": 0.45, "test_kendall_tau_U1_10e4": 0.3}
    assert run_metrics(old) == {"test_kendall_tau": 0.5, "test_kendall_tau_U1_1e1": 0.45,
                                "test_kendall_tau_U1_1e4": 0.3}
    both = {"test_kendall_tau_U1_10e2": 0.1, "test_kendall_tau_U1_1e2": 0.2}  # an old run evaluated again
    assert run_metrics(both) == {"test_kendall_tau_U1_1e2": 0.2}


@pytest.mark.parametrize("group", ["perm_scale", "perm_sign", "perm", "transformer_perm_scale"])
def test_every_condition_logs_to_mlflow(group, tmp_path):
    """Each group's orbit conditions become metric names that a real MLflow store accepts."""
    from mlflow import MlflowClient

    from eval.report import flat_metrics, log_to_mlflow, write_json

    conds = orbit_conditions(group)
    result = {"clean": {"kendall_tau": 0.5}, "robustness": {c: {"kendall_tau": 0.4} for c in conds},
              "audit": {"max": 1e-15, "mean": 1e-16}}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("e", artifact_location=str(tmp_path / "art")))
    log_to_mlflow(result, uri, run.info.run_id, write_json(result, tmp_path / "eval.json"))
    logged = client.get_run(run.info.run_id).data.metrics
    assert set(logged) == set(flat_metrics(result)) and len(logged) == len(conds) + 3


def test_invariant_model_is_robust_and_passes_the_audit_statnet_does_not():
    spec, ws, y = _synthetic()
    batches = lambda: [(ws[:12], y[:12]), (ws[12:], y[12:])]  # noqa: E731
    mono = evaluate(*_model("monomial_nfn", spec), batches, audit_samples=3)
    for cond, metrics in mono["robustness"].items():
        assert metrics["kendall_tau"] == pytest.approx(mono["clean"]["kendall_tau"], abs=1e-6), cond
    assert mono["audit"]["max"] < 1e-9 and mono["audit"]["networks"] == 24
    stat = evaluate(*_model("statnet", spec), batches, audit_samples=3)
    assert stat["robustness"]["permuted"]["kendall_tau"] == pytest.approx(stat["clean"]["kendall_tau"], abs=1e-6)
    assert stat["audit"]["max"] > 1e-3  # statistics change under scaling
    # ... but statnet claims permutations only, and on them the audit passes
    assert stat["audit"]["claimed"]["group"] == "perm" and stat["audit"]["claimed"]["max"] < 1e-9
    assert "claimed" not in mono["audit"]  # it claims the whole group: one audit
    assert "on the group the model claims (perm): max = " in result_table(stat)
    table = markdown_table({"statnet": stat, "monomial_nfn": mono}, "t")
    assert f"| {stat['audit']['max']:.2e}; perm: {stat['audit']['claimed']['max']:.2e} |" in table  # exact: no note
    quasi = evaluate(*_model("monomial_nfn_quasi", spec, eps=0.5), batches, audit_samples=3)
    assert quasi["invariance_exact"] is False and quasi["audit"]["max"] > 1e-9
    shared = evaluate(*_model("monomial_nfn_quasi", spec, eps=0.5, alpha_mode="shared"), batches, audit_samples=3)
    assert shared["invariance_exact"] is True and shared["audit"]["max"] < 1e-9


@pytest.mark.ray
def test_eval_on_a_table_writes_json_and_scores_checkpoints(digits_cnn_table, tmp_path):
    from zoo_ingest import open_table

    table = open_table(digits_cnn_table)
    arch, spec = next((a, s) for a, s in table.archs.items() if s.activation == "relu")
    model, card = _model("monomial_nfn", spec)
    save_metanet(tmp_path / "m", model, card)
    result, path, text = evaluate_model(str(tmp_path / "m"), digits_cnn_table, json_path=str(tmp_path / "e.json"),
                                        audit_samples=2, log_mlflow=False)
    assert json.loads(path.read_text())["n"] == result["n"] == table.count_rows("test", arch, where={
        "test_accuracy": (-np.inf, np.inf)})
    assert "kendall_tau" in text and "invariance audit" in text and "U[1,10^4]" in text
    assert result["audit"]["max"] < 1e-9
    # the tanh architecture is not the model's: a clear error naming it
    tanh_spec = next(s for s in table.archs.values() if s.activation == "tanh")
    other, other_card = _model("monomial_nfn", NetworkSpec.from_state_dict(Siren().state_dict(), "sine"))
    save_metanet(tmp_path / "siren", other, other_card)
    with pytest.raises(ArchitectureMismatch, match="has no networks of the architecture"):
        evaluate_model(str(tmp_path / "siren"), digits_cnn_table, log_mlflow=False)
    assert tanh_spec.arch_id != arch


@pytest.mark.ray
def test_score_files_and_folders(digits_cnn_table, tmp_path):
    from pathlib import Path

    zoo = Path(digits_cnn_table).parent / "zoo"
    files = sorted(str(p) for p in zoo.glob("net-00000*_step-00000.safetensors"))
    meta = {r.split(",")[0]: r for r in (zoo / "metadata.csv").read_text().splitlines()[1:]}
    relu_files = [f for f in files if ",relu," in meta.get(Path(f).name, "")]
    tanh_files = [f for f in files if ",tanh," in meta.get(Path(f).name, "")]
    assert relu_files and tanh_files
    spec = NetworkSpec.from_state_dict(SmallCNN().state_dict(), "relu")
    model, card = _model("monomial_nfn", spec)
    scores = score(relu_files, model, card)
    assert len(scores) == len(relu_files) and all(0 < s.value < 1 and s.error is None for s in scores)
    folder = score([str(zoo)], model, card)
    by_source = {s.source: s for s in folder}
    assert len(folder) == len(meta)
    ok = by_source[f"{zoo}/{Path(relu_files[0]).name}"]
    assert ok.value == pytest.approx(scores[0].value, abs=1e-6)
    bad = by_source[f"{zoo}/{Path(tanh_files[0]).name}"]
    assert bad.value is None and "not the model's" in bad.error
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="broken.safetensors"):
        score([str(broken)], model, card)


def test_unknown_model_references_fail_clearly(tmp_path):
    with pytest.raises(ModelNotFound, match="neither a local"):
        load_model("nonsense")
    with pytest.raises(ModelNotFound, match="not found in the MLflow registry"):
        load_model("models:/nope@champion", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    with pytest.raises(FileNotFoundError, match="metanet.json"):
        load_model(str(tmp_path))
