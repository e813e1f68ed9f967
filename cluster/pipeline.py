"""`metazoo pipeline`: generate (or take) a zoo -> ingest -> train each family -> evaluate -> compare.

Every stage records what it produced in `<store>/pipeline/<zoo>.json` (written atomically), keyed by a
hash of the settings that decide its output, so a rerun skips stages already complete and redoes only
what changed or never finished. Registration happens in training: every family's best checkpoint is
registered, and the `champion` alias moves only to a model that beats the current champion.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from cluster.pipeline_config import ZOO_DEFAULTS, PipelineConfig
from training.config import resolve_tracking_uri


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class State:
    """Stage results of one pipeline, persisted atomically after every stage at `<store>/pipeline/`
    (a local folder or an object store: a job submitted to a cluster keeps its state with its data)."""

    def __init__(self, folder, name: str):
        self.folder, self.name = folder, name  # folder: a zoo_ingest.storage.Location
        self.data = json.loads(folder.read_bytes(name)) if folder.exists(name) else {}

    def get(self, stage: str, key: str):
        entry = self.data.get(stage, {}).get(key)
        return entry["value"] if entry else None

    def matches(self, stage: str, key: str, fingerprint: str) -> bool:
        entry = self.data.get(stage, {}).get(key)
        return bool(entry) and entry["fingerprint"] == fingerprint

    def put(self, stage: str, key: str, fingerprint: str, value) -> None:
        self.data.setdefault(stage, {})[key] = {"fingerprint": fingerprint, "value": value}
        self.folder.write_bytes(self.name, json.dumps(self.data, indent=1, default=str).encode())


def _stage(title: str, i: int, total: int) -> None:
    print(f"\n[{i}/{total}] {title}", flush=True)


def _state(cfg: PipelineConfig) -> State:
    from zoo_ingest.storage import Location

    return State(Location(cfg.store.rstrip("/")).child("pipeline"), f"{cfg.folder}.json")


def check_services(cfg: PipelineConfig) -> None:
    """Fail within seconds on an unreachable MLflow server, Ray cluster or object store."""
    from training.tracking import check_tracking_server

    tracking = resolve_tracking_uri(cfg.tracking_uri)
    check_tracking_server(tracking)
    for uri in (cfg.store, cfg.zoo.uri, cfg.table):
        if uri and "://" in uri and not uri.startswith("file://"):
            from zoo_ingest.storage import Location

            loc = Location(uri.rstrip("/"))
            try:
                loc.fs.ls(loc.path.split("/")[0])  # the bucket must answer
            except FileNotFoundError:
                raise FileNotFoundError(f"{uri}: the bucket does not exist") from None
            except Exception as exc:
                raise ConnectionError(f"cannot reach the storage of {uri}: {exc}") from None
    if cfg.zoo.uri and not cfg.zoo.uri.startswith(("s3://", "gs://")) and not Path(cfg.zoo.uri).exists():
        raise FileNotFoundError(f"zoo.uri {cfg.zoo.uri!r} does not exist (set zoo.uri to an existing zoo, "
                                "or leave it empty to generate one)")


def run_pipeline(cfg: PipelineConfig, progress: bool = True) -> dict:
    from eval.api import evaluate_model
    from training import main as train_main

    started = time.perf_counter()
    check_services(cfg)
    tracking_uri = resolve_tracking_uri(cfg.tracking_uri)
    train_cfgs = {f.label: cfg.train_config(f) for f in cfg.families}  # validate every family up front
    state = _state(cfg)
    total = 3 + 2 * len(cfg.families) - (1 if cfg.zoo.uri else 0)
    step = 0
    table_uri = cfg.table_uri()

    def announce(title: str) -> None:
        nonlocal step
        step += 1
        _stage(title, step, total)

    table_fp = build_table(cfg, announce, progress)

    results, runs = {}, {}
    for family in cfg.families:
        tcfg = train_cfgs[family.label]
        fp = _hash({"table": table_fp, "train": tcfg.model_dump(mode="json")})
        step += 1
        done = state.get("train", family.label)
        if state.matches("train", family.label, fp) and done and _model_still_there(done):
            _stage(f"train {family.label}: already done (run {done['run_id']})", step, total)
        else:
            _stage(f"train {family.label} ({family.model}, {tcfg.scaling.num_workers} workers, "
                   f"{tcfg.epochs} epochs)", step, total)
            r = train_main(tcfg)
            done = {"run_id": r.run_id, "metanet_path": r.metanet_path, "registered_model": r.registered_model,
                    "version": r.version, "champion": r.champion, "num_params": r.num_params,
                    "experiment": r.experiment}
            state.put("train", family.label, fp, done)
        runs[family.label] = done
        step += 1
        efp = _hash({"train": fp, "eval": cfg.eval.model_dump()})
        if state.matches("eval", family.label, efp):
            _stage(f"evaluate {family.label}: already done", step, total)
            results[family.label] = state.get("eval", family.label)
            continue
        _stage(f"evaluate {family.label} on the {cfg.eval.split} split", step, total)
        ref = f"runs:/{done['run_id']}" if done["run_id"] else done["metanet_path"]
        report_dir = Path(_report_dir(cfg))
        result, _, text = evaluate_model(
            ref, table_uri, split=cfg.eval.split, exponents=tuple(cfg.eval.scales),
            audit_samples=cfg.eval.audit_samples, audit_networks=cfg.eval.audit_networks,
            json_path=str(report_dir / f"eval-{family.label}.json"), tracking_uri=tracking_uri,
            log_mlflow=bool(done["run_id"]),
        )
        print(text)
        results[family.label] = result
        state.put("eval", family.label, efp, result)

    step += 1
    _stage("compare the families", step, total)
    report = write_comparison(cfg, results, runs, tracking_uri)
    summary_text = closing_summary(cfg, report, runs, tracking_uri, time.perf_counter() - started)
    print(summary_text)
    return {"results": results, "runs": runs, "report": report, "table": table_uri}


def build_table(cfg: PipelineConfig, announce, progress: bool = True) -> str:
    """The generate (unless `zoo.uri` names a zoo) and ingest stages; both skip work already done.

    `announce(title)` is called before each stage. Returns the table's fingerprint (its URI and row
    counts per architecture and split), part of the key of everything trained on it."""
    from zoo_ingest import ingest
    from zoo_ingest.generate import generate

    zoo_uri, table_uri = cfg.zoo_uri(), cfg.table_uri()
    if not cfg.zoo.uri:
        announce(f"generate {cfg.zoo.name}: {cfg.zoo.n} networks -> {zoo_uri}")
        result = generate(cfg.zoo.name, zoo_uri, n=cfg.zoo.n, seed=cfg.zoo.seed, copies=cfg.zoo.copies,
                          options=cfg.zoo.options or None, progress=progress, summary=False)
        print(result.summary())
    split_by = cfg.zoo.split_by or ZOO_DEFAULTS.get(cfg.zoo.name, {}).get("split_by")
    announce(f"ingest {zoo_uri} -> {table_uri} (split by {split_by or 'model_id'})")
    summary = ingest(zoo_uri, table_uri, format=cfg.zoo.format, zoo=cfg.zoo.name, split_by=split_by,
                     split=cfg.zoo.split, progress=progress)
    print(summary.format())
    return _hash({"table": table_uri, "rows": summary.rows, "archs": summary.rows_by_arch})


def _report_dir(cfg: PipelineConfig) -> str:
    base = cfg.store if "://" not in cfg.store else ".metazoo"
    return str(Path(base) / "reports" / cfg.folder)


def write_comparison(cfg: PipelineConfig, results: dict, runs: dict, tracking_uri: str) -> dict:
    """Markdown table + PNG plots under the report folder, also logged as an MLflow run."""
    from eval.compare import markdown_table, plot_metric_vs_scale, plot_predictions

    out = Path(_report_dir(cfg))
    out.mkdir(parents=True, exist_ok=True)
    title = f"{cfg.zoo.name}: metanetwork comparison ({cfg.eval.split} split)"
    md = out / "comparison.md"
    md.write_text(markdown_table(results, title))
    pngs = [plot_metric_vs_scale(results, out / "metric_vs_scale.png", title)]
    if all(r.get("task") == "generalization" for r in results.values()):
        pngs.append(plot_predictions(results, out / "predictions.png", title))
    report = {"markdown": str(md), "plots": [str(p) for p in pngs], "run_id": None}
    experiments = {r["experiment"] for r in runs.values() if r.get("experiment")}
    if experiments and any(r.get("run_id") for r in runs.values()):
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(sorted(experiments)[0])
        with mlflow.start_run(run_name=f"comparison-{time.strftime('%Y%m%d-%H%M%S')}") as run:
            mlflow.set_tag("metazoo.kind", "comparison")
            for label, r in results.items():
                mlflow.log_metric(f"{label}.test_{r['metric']}", r["clean"][r["metric"]])
                mlflow.log_metric(f"{label}.audit_max", r["audit"]["max"])
            mlflow.log_artifact(str(md), artifact_path="comparison")
            for p in pngs:
                mlflow.log_artifact(str(p), artifact_path="comparison")
            report["run_id"] = run.info.run_id
    if "://" in cfg.store:  # the local folder goes with the job's working directory: publish to the store
        from zoo_ingest.storage import Location

        dest = Location(cfg.store.rstrip("/")).child(f"reports/{cfg.folder}")
        for f in sorted(out.iterdir()):
            if f.is_file():
                dest.write_bytes(f.name, f.read_bytes())
        report["published"] = dest.url
    return report


def closing_summary(cfg: PipelineConfig, report: dict, runs: dict, tracking_uri: str, seconds: float) -> str:
    lines = ["", Path(report["markdown"]).read_text(), f"weight table: {cfg.table_uri()}",
             f"report: {report['markdown']} (+ {', '.join(report['plots'])})"]
    for label, r in runs.items():
        reg = f", registered {r['registered_model']} v{r['version']}" if r.get("registered_model") else ""
        lines.append(f"  {label}: run {r.get('run_id')}{reg}{' (champion)' if r.get('champion') else ''}")
    if report.get("published"):
        lines.append(f"report and evaluation files copied to {report['published']}")
    if report.get("run_id"):
        lines.append(f"comparison run: {report['run_id']}")
    lines.append(f"finished in {seconds / 60:.1f} min; open the MLflow UI: "
                 f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000")
    return "\n".join(lines)


def _model_still_there(done: dict) -> bool:
    """A finished training counts on rerun if its model is still where it was written (a local folder
    under the checkpoint storage path; models in an object store are trusted)."""
    path = done.get("metanet_path")
    if not path:
        return False
    return ("://" in path and not path.startswith("file://")) or Path(path.removeprefix("file://")).exists()
