"""End to end as a user runs it on a cluster: `metazoo submit` sends a small pipeline to a real Ray head
(127.0.0.1, token auth); the zoo and the weight table live on S3 (a moto server on 127.0.0.1) and the runs
in a real `mlflow server` (127.0.0.1)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

# about 2.5 minutes with its servers: CI runs it after the default suite (make test-ci)
pytestmark = [pytest.mark.ray, pytest.mark.e2e, pytest.mark.ci]


@pytest.fixture(scope="module")
def big_ray_head():
    from cluster.local_ray import LocalRayHead

    with LocalRayHead(num_cpus=4) as head:  # logical CPUs: 2 training workers, the job, Ray Data
        yield head


def test_submitted_pipeline_reads_and_writes_s3_and_registers(big_ray_head, s3_server, mlflow_server, tmp_path):
    import s3fs
    from mlflow import MlflowClient

    opts, bucket = s3_server["options"], s3_server["bucket"]
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "e2e.yaml").write_text(f"""# metazoo pipeline --config e2e.yaml
store: s3://{bucket}/e2e
zoo: {{name: digits-cnn, n: 16, seed: 3, activation: relu, split: 50/25/25}}
families:
  - {{label: monomial_nfn, model: monomial_nfn, kwargs: {{hidden: 4}}}}
train: {{epochs: 1, batch_size: 8, scaling: {{num_workers: 2}}, mlflow: {{system_metrics: false}},
         checkpoint: {{storage_path: s3://{bucket}/e2e/runs}}}}
eval: {{scales: [1, 3], audit_samples: 2, audit_networks: 8}}
""")
    env = {
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HOME": str(tmp_path),
        "RAY_AUTH_TOKEN_PATH": str(big_ray_head.token_path),
        "AWS_ENDPOINT_URL": opts["endpoint_url"], "AWS_REGION": opts["region"],
        "AWS_ACCESS_KEY_ID": opts["key"], "AWS_SECRET_ACCESS_KEY": opts["secret"],
        "MLFLOW_TRACKING_URI": mlflow_server,
    }
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "metazoo"), "submit", "--address", big_ray_head.dashboard_url,
         "--working-dir", str(job_dir), "--", "pipeline", "--config", "e2e.yaml", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "compare the families" in output and "SUCCEEDED" in output
    assert opts["secret"] not in output and big_ray_head.token not in output  # credentials never printed
    # the zoo and the complete table are on S3
    fs = s3fs.S3FileSystem(key=opts["key"], secret=opts["secret"], endpoint_url=opts["endpoint_url"])
    assert fs.exists(f"{bucket}/e2e/zoos/digits-cnn/metadata.csv")
    assert fs.exists(f"{bucket}/e2e/tables/digits-cnn/_zoo.json")
    assert fs.glob(f"{bucket}/e2e/tables/digits-cnn/arch=*/split=train/*.parquet")
    # the run and the registered model are in the MLflow server
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("metazoo-digits-cnn-generalization")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`metazoo.model` = 'monomial_nfn'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["data.table"].startswith(f"s3://{bucket}/e2e/tables/digits-cnn")
    assert "test_kendall_tau" in runs[0].data.metrics
    mv = client.get_model_version_by_alias("metazoo-digits-cnn-generalization", "champion")
    assert mv.run_id == runs[0].info.run_id
    # the comparison report and evaluation files are published to the store
    assert fs.exists(f"{bucket}/e2e/reports/digits-cnn/comparison.md")
    assert fs.exists(f"{bucket}/e2e/reports/digits-cnn/eval-monomial_nfn.json")
    # the pipeline's state points at the best model inside the run's checkpoint on S3
    state = json.loads(fs.cat(f"{bucket}/e2e/pipeline/digits-cnn.json"))
    metanet = state["train"]["monomial_nfn"]["value"]["metanet_path"]
    assert metanet.startswith(f"s3://{bucket}/e2e/runs/") and fs.exists(metanet.removeprefix("s3://") + "/metanet.json")
