"""Statistics over seeds (eval.stats) and the benchmark report (eval.benchmark_report), against hand
computations. t_{0.975} quantiles from a printed table: df 2 -> 4.302653, df 4 -> 2.776445."""

import math

import pytest

from eval.benchmark_report import markdown, plot_conditions, plot_paired, summarize_benchmark
from eval.stats import NO_DIFFERENCE, overlap, paired, summarize, t_quantile


def test_t_quantiles_match_the_printed_table():
    assert t_quantile(2) == pytest.approx(4.302653, abs=1e-6)
    assert t_quantile(4) == pytest.approx(2.776445, abs=1e-6)


def test_summary_mean_std_and_student_t_interval_by_hand():
    s = summarize([0.5, 0.6, 0.7])
    # mean 0.6; std (ddof 1) = sqrt((0.01 + 0 + 0.01) / 2) = 0.1; half width = 4.302653 * 0.1 / sqrt(3)
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1)
    assert s["lo"] == pytest.approx(0.6 - half, abs=1e-6) and s["hi"] == pytest.approx(0.6 + half, abs=1e-6)
    one = summarize([0.4, float("nan")])  # NaN values are dropped; one value has no spread
    assert one["n"] == 1 and one["mean"] == 0.4 and math.isnan(one["std"]) and math.isnan(one["lo"])


def test_paired_differences_wins_and_verdicts_by_hand():
    # d = a - b = [0.1, -0.02, 0.05]: mean 0.04333, std 0.060277, half 4.302653 * 0.060277 / sqrt(3) = 0.14974
    d = paired({0: 0.6, 1: 0.7, 2: 0.65}, {0: 0.5, 1: 0.72, 2: 0.6})
    assert d["mean"] == pytest.approx(0.043333, abs=1e-6) and d["std"] == pytest.approx(0.060277, abs=1e-6)
    assert d["lo"] == pytest.approx(0.043333 - 0.149740, abs=1e-5) and d["hi"] == pytest.approx(0.193073, abs=1e-5)
    assert d["wins"] == 2 and d["n"] == 3 and d["verdict"] == NO_DIFFERENCE
    # d = [0.1, 0.11, 0.09]: mean 0.1, std 0.01, interval 0.1 +- 0.024841 excludes 0
    up = paired({0: 0.7, 1: 0.71, 2: 0.69}, {0: 0.6, 1: 0.6, 2: 0.6})
    assert up["lo"] == pytest.approx(0.1 - 0.024841, abs=1e-6) and up["verdict"] == "higher" and up["wins"] == 3
    down = paired({0: 0.6, 1: 0.6, 2: 0.6}, {0: 0.7, 1: 0.71, 2: 0.69})
    assert down["verdict"] == "lower" and down["wins"] == 0
    # only seeds both hold are paired
    part = paired({0: 0.7, 1: 0.71, 5: 0.1}, {0: 0.6, 1: 0.6, 2: 0.6})
    assert part["seeds"] == [0, 1] and part["n"] == 2


def test_overlap():
    assert overlap({"lo": 0, "hi": 1}, {"lo": 0.5, "hi": 2})
    assert not overlap({"lo": 0, "hi": 1}, {"lo": 1.5, "hi": 2})
    assert overlap({"lo": float("nan"), "hi": float("nan")}, {"lo": 1.5, "hi": 2})


def _record(family, model, seed, clean, scaled, audit=1e-3, status="ok"):
    if status != "ok":
        return {"family": family, "model": model, "seed": seed, "status": status, "error": "ValueError: boom"}
    return {"family": family, "model": model, "seed": seed, "status": "ok", "wall_s": 10.0 + seed,
            "epochs_run": 3, "result": {
                "metric": "kendall_tau", "n": 50, "num_params": 1000 if model == "monomial_nfn" else 2000,
                "invariance_exact": model == "monomial_nfn", "clean": {"kendall_tau": clean},
                "robustness": {"U[1,10^3]": {"kendall_tau": scaled}}, "audit": {"max": audit}}}


def test_benchmark_summary_and_report(tmp_path):
    families = [{"label": "statnet", "model": "statnet"}, {"label": "monomial_nfn", "model": "monomial_nfn"}]
    records = [
        _record("monomial_nfn", "monomial_nfn", 0, 0.60, 0.60), _record("monomial_nfn", "monomial_nfn", 1, 0.62, 0.62),
        _record("monomial_nfn", "monomial_nfn", 2, 0.61, 0.61),
        _record("statnet", "statnet", 0, 0.61, 0.10, audit=2.0),
        _record("statnet", "statnet", 1, 0.60, 0.11, audit=3.0),
        _record("statnet", "statnet", 2, 0.63, 0.09), _record("statnet", "statnet", 3, 0.0, 0.0, status="failed"),
    ]
    s = summarize_benchmark(records, families, [0, 1, 2, 3])
    assert s["conditions"] == ["no action", "U[1,10^3]"] and s["references"] == {"monomial_nfn": ["monomial_nfn"]}
    assert s["stats"]["statnet"]["no action"]["mean"] == pytest.approx((0.61 + 0.60 + 0.63) / 3)
    assert s["info"]["statnet"]["audit_max"] == 3.0 and s["info"]["statnet"]["seeds_failed"] == [3]
    assert s["info"]["monomial_nfn"]["wall_s"]["mean"] == pytest.approx(11.0)
    clean = s["paired"]["monomial_nfn"]["statnet"]["no action"]  # d = [0.01, -0.02, 0.02]
    assert clean["mean"] == pytest.approx(0.01 / 3) and clean["wins"] == 2 and clean["verdict"] == NO_DIFFERENCE
    scaled = s["paired"]["monomial_nfn"]["statnet"]["U[1,10^3]"]  # d = [-0.5, -0.51, -0.52]
    assert scaled["mean"] == pytest.approx(-0.51) and scaled["verdict"] == "lower"
    text = markdown(s, "test")
    assert text.index("| statnet |") < text.index("| monomial_nfn |")  # config order, not ranked
    assert f"| statnet | no action | {clean['mean']:+.3f}" in text and NO_DIFFERENCE in text
    assert "statnet is lower than monomial_nfn under 'U[1,10^3]'" in text
    assert "| statnet | 2,000 | 3.00e+00 (approximate by design) |" in text
    assert "statnet seed 3: ValueError: boom" in text
    for plot in (plot_conditions(s, tmp_path / "a.png", "t"), plot_paired(s, tmp_path / "b.png", "t")):
        assert plot.stat().st_size > 10_000


def test_benchmark_report_shows_the_audit_on_the_group_a_family_claims():
    families = [{"label": "hnp", "model": "hnp"}]
    records = [_record("hnp", "hnp", s, 0.6, 0.1, audit=7e3) for s in (0, 1)]
    for r, err in zip(records, (2e-15, 5e-15)):
        r["result"]["invariance_exact"] = True
        r["result"]["audit"]["claimed"] = {"group": "perm", "max": err, "mean": err / 2}
    s = summarize_benchmark(records, families, [0, 1])
    assert s["info"]["hnp"]["audit_claimed"] == {"group": "perm", "max": 5e-15}
    assert "| hnp | 2,000 | 7.00e+03; perm: 5.00e-15 |" in markdown(s, "test")
