"""The benchmark report on a classification benchmark of INRs: accuracy, and the sine zoo's "orbit" condition."""

from eval.benchmark_report import markdown, summarize_benchmark


def _record(family, seed, clean, orbit):
    cond = {c: {"accuracy": clean} for c in ("permuted", "signs")}
    cond["orbit"] = {"accuracy": orbit}
    return {"family": family, "seed": seed, "status": "ok", "wall_s": 10.0, "epochs_run": 20,
            "result": {"metric": "accuracy", "clean": {"accuracy": clean}, "robustness": cond, "num_params": 9000,
                       "invariance_exact": True, "audit": {"max": 0.0}, "n": 179}}


def test_report_shows_accuracy_under_the_orbit_condition_with_intervals():
    families = [{"label": "statnet_sine", "model": "statnet_sine"}, {"label": "monomial_nfn", "model": "monomial_nfn"}]
    records = [_record("statnet_sine", s, 0.76 + 0.005 * s, 0.76 + 0.005 * s) for s in range(5)]
    records += [_record("monomial_nfn", s, 0.30 + 0.01 * s, 0.10 + 0.002 * s) for s in range(5)]
    summary = summarize_benchmark(records, families, [0, 1, 2, 3, 4])
    assert summary["metric"] == "accuracy" and "orbit" in summary["conditions"]
    orbit = summary["stats"]["statnet_sine"]["orbit"]
    assert abs(orbit["mean"] - 0.77) < 1e-12 and orbit["lo"] < orbit["mean"] < orbit["hi"]
    text = markdown(summary, "digits-siren")
    assert "orbit" in text and "statnet_sine" in text and "accuracy" in text
