"""What the benchmark shows: one line per trial start and finish (a Ray Tune callback in the driver),
and the report: Markdown and JSON summary, plots, the resolved config, all logged to the parent run."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ray.tune import Callback


class TrialLines(Callback):
    """Prints `trial <family> seed <s>: started / finished / FAILED` (Tune's own tables are off)."""

    def __init__(self, specs: dict):
        self.specs, self.started = specs, {}

    def _name(self, trial) -> str:
        spec = self.specs.get(trial.config.get("key"), {})
        return f"trial {spec.get('family', '?')} seed {spec.get('seed', '?')}"

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.perf_counter()
        print(f"{self._name(trial)}: started", flush=True)

    def _elapsed(self, trial) -> str:
        return f"{time.perf_counter() - self.started.get(trial.trial_id, time.perf_counter()):.0f} s"

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        shown = ", ".join(f"{k}={v:.4f}" for k, v in last.items() if k.startswith("test_") and isinstance(v, float))
        epochs = last.get("epochs_run")
        print(f"{self._name(trial)}: finished in {self._elapsed(trial)}"
              + (f", {epochs} epochs" if epochs else "") + (f", {shown}" if shown else ""), flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = "see the report"
        spec = self.specs.get(trial.config.get("key"))
        if spec is not None:  # the trial wrote its error into its record before it raised
            from cluster.benchmark_trial import read_records

            record = read_records(spec["trials"], [trial.config["key"]]).get(trial.config["key"], {})
            error = (record.get("error") or error).splitlines()[0][:300]
        print(f"{self._name(trial)}: FAILED after {self._elapsed(trial)}: {error}", flush=True)


def _learning_curve(cfg, summary: dict, out: Path, title: str, md: Path) -> list[Path]:
    """Families that set `train.data.train_networks` also make a learning curve (eval/learning_curve.py):
    its table is appended to summary.md, its plot is learning_curve.png."""
    from eval import learning_curve

    curves = learning_curve.curves(summary, learning_curve.sized_families(cfg.families))
    if not curves:
        return []
    table = learning_curve.markdown(curves, summary["metric"])
    md.write_text(md.read_text() + "\n## Learning curve\n\n" + table)
    (out / "learning_curve.json").write_text(json.dumps(curves, indent=1, default=str))
    return [out / "learning_curve.json",
            learning_curve.plot(curves, summary["metric"], out / "learning_curve.png", title)]


def write_report(cfg, records: list[dict], parent: dict | None, tracking_uri: str, out: Path,
                 seconds: float) -> dict:
    from cluster.benchmark import resolved_config
    from eval.benchmark_report import markdown, plot_conditions, plot_paired, summarize_benchmark

    out.mkdir(parents=True, exist_ok=True)
    families = [{"label": f.label, "model": f.model} for f in cfg.families]
    summary = summarize_benchmark(records, families, cfg.all_seeds())
    summary["wall_s_total"] = seconds
    title = f"{cfg.zoo.name} ({cfg.folder}): benchmark over {len(cfg.all_seeds())} seeds ({cfg.eval.split} split)"
    md = out / "summary.md"
    md.write_text(markdown(summary, title))
    js = out / "summary.json"
    js.write_text(json.dumps({"summary": summary, "trials": records}, indent=1, default=str))
    (out / "config.yaml").write_text(resolved_config(cfg))
    files = [md, js, out / "config.yaml"]
    if summary["metric"] is not None:
        files.append(plot_conditions(summary, out / "metric_vs_scale.png", title))
        files.append(plot_paired(summary, out / "paired_differences.png", title))
        files += _learning_curve(cfg, summary, out, title, md)
    failed = sum(r.get("status") != "ok" for r in records)
    if parent:
        from cluster.benchmark_mlflow import log_summary

        log_summary(tracking_uri, parent["run_id"], summary, files, failed)
    if "://" in cfg.store:  # publish next to the trials
        from zoo_ingest.storage import Location

        dest = Location(cfg.store.rstrip("/")).child(f"benchmark/{cfg.folder}/report")
        for f in files:
            dest.write_bytes(Path(f).name, Path(f).read_bytes())
    print("\n" + md.read_text())
    print(f"report: {md} (+ {', '.join(Path(f).name for f in files[1:])})")
    if parent:
        print(f"MLflow parent run {parent['run_id']} in experiment {parent['experiment']!r}")
    print(f"{len(records) - failed} of {len(records)} trials complete"
          + (f", {failed} failed (a rerun retries them)" if failed else "")
          + f"; finished in {seconds / 60:.1f} min", flush=True)
    return {"summary": summary, "markdown": str(md), "files": [str(f) for f in files], "failed": failed}
