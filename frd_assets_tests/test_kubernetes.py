"""The Job manifests dagster-k8s builds for our runs, from deploy/helm/values.yaml, without a cluster:
everything runs for real up to the Kubernetes API call, whose body we keep instead of sending."""

import uuid
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance
from dagster._core.launcher import LaunchRunContext
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

from frd_assets.core.names import PARTITION_TAG
from frd_assets_tests.test_routing import LAUNCH

REPO = Path(__file__).resolve().parents[1]
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
users: [{name: none, user: {token: unused}}]
"""


@pytest.fixture
def k8s_instance(tmp_path):
    values = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
    launcher = values["runLauncher"]["config"]["customRunLauncher"]
    coordinator = values["dagsterDaemon"]["runCoordinator"]["config"]["customRunCoordinator"]
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    for queue in launcher["config"]["queues"].values():  # outside a cluster: a kubeconfig that is never used
        queue["config"].update(load_incluster_config=False, kubeconfig_file=str(tmp_path / "kubeconfig"))
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({"run_launcher": launcher, "run_coordinator": coordinator}))
    with DagsterInstance.from_config(str(home)) as instance:
        yield instance


def launch_and_capture(instance, assets):
    partition = str(uuid.uuid4())
    instance.add_dynamic_partitions("dataset_uuid", [partition])
    with define_out_of_process_context(str(REPO / "workspace.yaml"), None, instance) as context:
        result = execute_dagster_graphql(context, LAUNCH, {"executionParams": {
            "selector": {"repositoryLocationName": "frd_assets", "repositoryName": "__repository__",
                         "jobName": "__ASSET_JOB", "assetSelection": [{"path": [a]} for a in assets]},
            "executionMetadata": {"tags": [{"key": PARTITION_TAG, "value": partition}]},
            "runConfigData": {}}})
        run = instance.get_run_by_id(result.data["launchRun"]["run"]["runId"])
    router = instance.run_launcher
    sent = []
    for inner in (router.launcher_for("cpu"), router.launcher_for("gpu")):
        inner._api_client.create_namespaced_job_with_retries = lambda body, namespace: sent.append((body, namespace))
    router.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    [(job, namespace)] = sent
    return run, job, namespace


def test_a_gpu_run_requests_a_gpu_on_gpu_nodes(k8s_instance):
    run, job, namespace = launch_and_capture(k8s_instance, ["lora_adapter"])
    assert run.tags["frd/queue"] == "gpu" and namespace == "dagster"
    pod = job.spec.template.spec
    assert pod.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    assert pod.containers[0].args[:3] == ["dagster", "api", "execute_run"]
    assert job.metadata.labels["dagster/run-id"] == run.run_id


def test_a_cpu_run_does_not(k8s_instance):
    run, job, _ = launch_and_capture(k8s_instance, ["seed_dataset", "generated_dataset", "validated_dataset"])
    assert run.tags["frd/queue"] == "cpu"
    pod = job.spec.template.spec
    assert "nvidia.com/gpu" not in (pod.containers[0].resources.limits or {})
    assert not pod.node_selector and not pod.tolerations
    assert pod.containers[0].resources.requests == {"cpu": "2", "memory": "8Gi"}
