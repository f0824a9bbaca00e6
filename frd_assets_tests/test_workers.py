"""Trial workers: one process per trial, several at once on one study, a killed one costing one trial; the
Kubernetes Job that runs them as pods; the torch thread budget every run and worker applies."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from frd_assets.core import settings
from frd_assets.core.lora import worker
from frd_assets.core.lora.kubernetes import K8S_WORKERS_ENV, KubernetesWorkers, job_name, worker_job_manifest
from frd_assets.core.lora.pool import slot_env
from frd_assets.core.lora.search import SearchSettings, run_search
from frd_assets.core.lora.study_storage import STORAGE_ENV
from frd_assets.core.lora.trial import TrainingConfig
from frd_assets.core.lora.worker import WORKER_ATTR
from frd_assets.core.records import Record
from frd_assets.core.threads import (
    EMBEDDED_CONCURRENT_RUNS,
    THREADS_ENV,
    apply_thread_budget,
    available_cores,
    cgroup_cpu_limit,
    runs_sharing_cores,
    thread_budget,
)
from frd_assets.defs.config import LoraRunConfig
from frd_assets.defs.resources import LoraResource
from frd_assets_tests.test_kubernetes import k8s_instance, launch_and_capture  # noqa: F401 (k8s_instance: a fixture)
from frd_assets_tests.test_tune_resume import RECORDS

REPO = Path(__file__).resolve().parents[1]
COMPLETE, PRUNED, FAIL, RUNNING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                                   optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING)


def test_two_workers_finish_exactly_n_trials_each_in_its_own_process(tmp_path, tiny_model_dir, monkeypatch):
    # A budget of 4 threads on any machine: each of the two workers must get 2, whatever the cores here.
    monkeypatch.setenv(THREADS_ENV, "4")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"  # the embedded default: one SQLite file, two writers
    records = [Record(f"r{i}", r["instruction"], "", r["output"]) for i, r in enumerate(RECORDS[:16])]
    result = run_search(records, base_model=str(tiny_model_dir), n_trials=3, storage_url=storage, study_name="pool",
                        work_dir=tmp_path / "work", out_dir=tmp_path / "out",
                        training=TrainingConfig(epochs=1, batch_size=4, evals_per_trial=1),
                        settings=SearchSettings(n_workers=2, pruner="none"), print_fn=lambda _: None)

    trials = optuna.load_study(study_name="pool", storage=storage).trials
    # Exactly n_trials: the third ran while the second worker was still busy, and no fourth was started.
    assert [t.state for t in trials] == [COMPLETE] * 3
    assert len({t.user_attrs[WORKER_ATTR]["pid"] for t in trials}) == 3  # a fresh process for every trial
    assert {t.user_attrs["torch_threads"] for t in trials} == {2}  # torch.get_num_threads() inside each worker
    # Every worker process seeds its sampler differently: same-seeded ones would repeat the first points.
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 3
    assert all((tmp_path / "work" / f"trial-{t.number}" / "adapter_model.safetensors").exists() for t in trials)
    assert result.best_eval_loss == min(t.value for t in trials)
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_the_fork_server_gives_each_trial_its_own_process_environment_output_and_exit_code(tmp_path):
    """Trials forked from the server (CPU): the worker's main runs in a new process per request with exactly
    the slot's environment, its output and exit status reach the pool, and the server ends with the pool."""
    from frd_assets.core.lora.fork_server import ForkServer, available

    assert available([]) and not available(["0"])  # with a GPU every trial is exec'd instead
    server = ForkServer(worker.main)
    try:
        spec = str(tmp_path / "missing.json")
        # Not given the storage variable (whatever this process has): the worker's own one-line refusal.
        unset = server.spawn(["--spec", spec], {"PATH": os.environ["PATH"]})
        assert f"{STORAGE_ENV} is not set" in unset.stdout.read()
        assert unset.wait(timeout=60) == 2
        # Given it, the missing spec raises: the traceback comes through and the exit status is 1.
        crash = server.spawn(["--spec", spec], {STORAGE_ENV: "sqlite://"})
        assert "FileNotFoundError" in crash.stdout.read()
        assert crash.wait(timeout=60) == 1
        assert len({unset.pid, crash.pid, server._server.pid, os.getpid()}) == 4
    finally:
        server.close()
    assert server._server.returncode == 0


def report_bitsandbytes(argv: list[str]) -> int:
    """A fork-server entry point for the test below: exit 3 where bitsandbytes is importable, 4 where not."""
    import importlib.util

    return 3 if importlib.util.find_spec("bitsandbytes") is not None else 4


def test_a_fork_server_for_a_job_without_nf4_starts_without_bitsandbytes():
    """peft imports bitsandbytes whenever it is installed (0.7 s of a server's start, torch's compiler stack
    with it); a server started for a job without quantization hides it, and one for an nf4 job keeps it."""
    from frd_assets.core.lora.fork_server import ForkServer

    for hidden, code in (((), 3), (("bitsandbytes",), 4)):
        server = ForkServer(report_bitsandbytes, hidden=hidden)
        try:
            child = server.spawn([], {"PATH": os.environ["PATH"]})
            child.stdout.read()
            assert child.wait(timeout=120) == code, hidden
        finally:
            server.close()


def test_a_worker_killed_mid_trial_costs_that_trial_only(tmp_path, tiny_model_dir, postgres_db):
    storage = f"postgresql+psycopg://postgres@127.0.0.1:5432/{postgres_db}"  # the deployment's storage
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    # A trial trains for a few seconds: the kill lands mid-trial (a worker records itself once it trains).
    cmd = [sys.executable, "-m", "frd_assets.cli", "tune", str(data), "--base-model", str(tiny_model_dir),
           "--trials", "3", "--workers", "2", "--storage", storage, "--study", "kill", "--out", str(tmp_path / "out"),
           "--work-dir", str(tmp_path / "work"), "--epochs", "4", "--batch-size", "2", "--pruner", "none"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        victim, deadline = None, time.monotonic() + 300
        while victim is None:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no trial started within 300 s"
            time.sleep(0.1)
            victim = running_trial_with_worker(postgres_db)
        number, pid = victim
        os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]

    trials = optuna.load_study(study_name="kill", storage=storage).trials
    states = [t.state for t in trials]
    assert states.count(COMPLETE) == 3 and states.count(FAIL) == 1 and RUNNING not in states
    assert trials[number].state == FAIL  # failed when its process was found dead, not left RUNNING
    # ...and queued again with the same parameters, which another worker then completed.
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == number]
    assert retry.state == COMPLETE and retry.params == trials[number].params
    assert f"trial {number}: its worker (pid {pid}) died" in out


@pytest.mark.timeout(600)  # the failure this guards against is a pool starting workers forever
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning", "ignore:Heartbeat of storage")
def test_a_trial_whose_process_died_before_it_recorded_itself_does_not_stall_the_pool(tmp_path, tiny_model_dir):
    storage_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    settings = SearchSettings(pruner="none")
    # A RUNNING trial without a worker record and without a heartbeat: what a worker killed between the
    # trial's creation and its first line leaves. Nobody will finish it, and it never goes stale.
    optuna.create_study(study_name="orphan", storage=settings.storage(storage_url)).ask()
    records = [Record(f"r{i}", r["instruction"], "", r["output"]) for i, r in enumerate(RECORDS[:12])]
    run_search(records, base_model=str(tiny_model_dir), n_trials=2, storage_url=storage_url, study_name="orphan",
               work_dir=tmp_path / "work", out_dir=tmp_path / "out",
               training=TrainingConfig(epochs=1, batch_size=4, evals_per_trial=1), settings=settings,
               print_fn=lambda _: None)

    states = [t.state for t in optuna.load_study(study_name="orphan", storage=storage_url).trials]
    assert states == [RUNNING, COMPLETE, COMPLETE]  # at most that one trial lost; the search went on


def running_trial_with_worker(database: str) -> tuple[int, int] | None:
    """(number, worker pid) of a RUNNING trial that is training, read with plain SQL: creating an Optuna
    storage here would race the search's own creation of the tables."""
    import psycopg

    query = ("SELECT t.number, a.value_json FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
             "WHERE t.state = 'RUNNING' AND a.key = %s")
    with psycopg.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={database}") as conn:
        try:
            row = conn.execute(query, (WORKER_ATTR,)).fetchone()
        except psycopg.errors.UndefinedTable:  # the search has not created its tables yet
            return None
    return (row[0], json.loads(row[1])["pid"]) if row else None


def helm_workers() -> tuple[KubernetesWorkers, dict]:
    """The KubernetesWorkers that deploy/helm/values.yaml configures, and the gpu queue's launcher config."""
    values = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
    gpu = values["runLauncher"]["config"]["customRunLauncher"]["config"]["queues"]["gpu"]["config"]
    env = dict(item.split("=", 1) for item in gpu["env_vars"])
    return KubernetesWorkers.from_env(env), {**gpu, "env": env}


def test_the_kubernetes_job_runs_the_worker_module_in_parallel_pods_against_the_study():
    workers, gpu = helm_workers()
    spec = Path(gpu["env"]["FRD_TRIALS_DIR"]) / "frd-uuid-SmolLM2" / "search.json"
    job = worker_job_manifest(workers, study_name="frd-uuid-SmolLM2", spec=spec, n_workers=3,
                              storage_url="postgresql+psycopg://frd@postgres/optuna")

    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert job["metadata"]["name"] == job_name("frd-uuid-SmolLM2") and job["metadata"]["namespace"] == "dagster"
    # Work-queue Job: 3 pods at once and no completion count, since the study decides when the work is done.
    assert job["spec"]["parallelism"] == 3 and "completions" not in job["spec"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert container["command"] == ["python", "-m", "frd_assets.core.lora.pool", "--spec", str(spec), "--workers", "1"]
    assert container["envFrom"] == [{"secretRef": {"name": "frd-assets-env"}}]  # OPTUNA_STORAGE, never inline
    assert "postgres" not in json.dumps(job)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    # The pods mount the trials claim where the run pod does, so the spec and every trial adapter are shared.
    [volume] = pod["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == workers.trials_claim
    assert container["volumeMounts"] == [{"name": volume["name"], "mountPath": workers.trials_mount}]
    run_pod = gpu["run_k8s_config"]
    assert {"name": "trials", "persistent_volume_claim": {"claim_name": workers.trials_claim}} in \
        run_pod["pod_spec_config"]["volumes"]
    assert {"name": "trials", "mount_path": workers.trials_mount} in run_pod["container_config"]["volume_mounts"]
    # A study name longer than a Kubernetes name may be still gets a valid, stable one.
    long_name = job_name("frd-" + "x" * 200)
    assert len(long_name) <= 63 and long_name == job_name("frd-" + "x" * 200)


def test_the_gpu_run_pod_dagster_k8s_builds_mounts_the_claim_and_knows_the_workers(request):
    workers, _ = helm_workers()
    # The real K8sRunLauncher from the Helm values, up to the Kubernetes API call (test_kubernetes.py).
    _, job, _ = launch_and_capture(request.getfixturevalue("k8s_instance"), ["lora_adapter"])
    pod = job.spec.template.spec
    [claim] = [v.persistent_volume_claim.claim_name for v in pod.volumes or [] if v.persistent_volume_claim]
    assert claim == workers.trials_claim
    [container] = pod.containers
    assert workers.trials_mount in [m.mount_path for m in container.volume_mounts]
    env = {e.name: e.value for e in container.env or []}
    assert Path(env["FRD_TRIALS_DIR"]).is_relative_to(workers.trials_mount)
    assert KubernetesWorkers.from_env(env) == workers


def test_the_helm_values_name_what_the_code_reads_and_run_the_project_image():
    values = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
    workers, gpu = helm_workers()
    [deployment] = values["dagster-user-deployments"]["deployments"]
    # The variables the run pod gets are the ones the code reads: the pods, the trials folder.
    assert K8S_WORKERS_ENV in gpu["env"] and settings.FRD_TRIALS_DIR in gpu["env"]
    resource = LoraResource.from_env(gpu["env"])
    assert resource.trial_workers() == workers
    assert resource.trials_dir().is_relative_to(workers.trials_mount)
    # The worker pods run the code location's image and read the study from the Secret it reads.
    image = deployment["image"]
    assert workers.image == f"{image['repository']}:{image['tag']}" == gpu["job_image"]
    assert set(workers.env_secrets) <= {s["name"] for s in deployment["envSecrets"]}
    assert STORAGE_ENV == settings.OPTUNA_STORAGE  # the one variable of the study's URL, for runs and pods
    # The pods' command exists in this code and takes the manifest's arguments: without the storage variable
    # it stops at once, naming it (the image's Python is `python`, as the Dockerfile's base image has it).
    spec = Path(gpu["env"]["FRD_TRIALS_DIR"]) / "s" / "search.json"
    manifest = worker_job_manifest(workers, study_name="s", spec=spec, n_workers=2,
                                   storage_url="postgresql+psycopg://frd@postgres/optuna")
    command = manifest["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[0] == "python" and "FROM python:3.11" in (REPO / "Dockerfile").read_text()
    env = {k: v for k, v in os.environ.items() if k != STORAGE_ENV}
    done = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"{STORAGE_ENV} is not set" in done.stderr


def test_the_run_config_and_the_resource_carry_n_workers():
    assert LoraRunConfig().settings() == SearchSettings()  # the core default: one trial at a time
    assert LoraRunConfig().settings(default_workers=3).n_workers == 3  # the deployment's LORA_N_WORKERS...
    assert LoraRunConfig(n_workers=2).settings(default_workers=3).n_workers == 2  # ...unless the run says
    assert LoraRunConfig(weight_decay=0.1).training().weight_decay == 0.1
    with pytest.raises(ValueError, match="search settings: n_workers must be"):
        LoraRunConfig(n_workers=0)
    assert LoraResource.from_env({}).n_workers == 1 and LoraResource.from_env({}).trial_workers() is None
    assert LoraResource.from_env({settings.LORA_N_WORKERS: "2"}).n_workers == 2
    with pytest.raises(ValueError, match=settings.LORA_N_WORKERS):
        LoraResource.from_env({settings.LORA_N_WORKERS: "two"})
    # A broken FRD_K8S_TRIAL_WORKERS stops the code location from loading, not the run an hour later.
    with pytest.raises(ValueError, match=K8S_WORKERS_ENV):
        LoraResource.from_env({K8S_WORKERS_ENV: '{"image": "i"}'})


def test_kubernetes_workers_refuse_sqlite_a_spec_off_the_claim_and_bad_config():
    workers, _ = helm_workers()
    spec = Path(workers.trials_mount) / "s" / "search.json"
    with pytest.raises(ValueError, match="not SQLite"):
        worker_job_manifest(workers, study_name="s", spec=spec, n_workers=2, storage_url="sqlite:///optuna.db")
    with pytest.raises(ValueError, match="set FRD_TRIALS_DIR to a folder under /trials"):
        worker_job_manifest(workers, study_name="s", spec=Path("/tmp/s/search.json"), n_workers=2,
                            storage_url="postgresql://db/optuna")
    with pytest.raises(ValueError, match="gpus must be"):
        KubernetesWorkers.from_env({K8S_WORKERS_ENV: '{"image": "i", "trials_claim": "c", "gpus": -1}'})
    with pytest.raises(ValueError, match="unknown field 'parallelism'"):
        KubernetesWorkers.from_env({K8S_WORKERS_ENV: '{"image": "i", "trials_claim": "c", "parallelism": 4}'})
    assert KubernetesWorkers.from_env({}) is None  # unset: local worker processes


@pytest.mark.parametrize("slot, gpus, expected_gpu", [
    (0, ["0", "1"], "0"),
    (1, ["0", "1"], "1"),
    (2, ["0", "1"], "0"),  # more workers than GPUs: round robin
    (1, ["GPU-6f2c", "GPU-91ab"], "GPU-91ab"),  # CUDA_VISIBLE_DEVICES may name GPUs by UUID
    (0, [], None),  # CPU only: no pinning
])
def test_each_worker_slot_gets_one_gpu_and_its_thread_share(slot, gpus, expected_gpu):
    env = slot_env(slot, threads=3, gpus=gpus)
    assert env.get("CUDA_VISIBLE_DEVICES") == expected_gpu
    assert env[THREADS_ENV] == env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"


@pytest.mark.parametrize("cpu_max, cores", [
    ("max 100000", None),  # no limit (cgroup v2's default)
    ("400000 100000", 4),  # a pod with limits.cpu: "4"
    ("150000 100000", 2),  # 1.5 CPUs: two threads, not one that leaves half a core idle
    ("50000 100000", 1),
    ("garbage", None),
])
def test_cgroup_cpu_limit(cpu_max, cores):
    assert cgroup_cpu_limit(cpu_max) == cores


def test_the_thread_budget_comes_from_frd_torch_threads():
    assert thread_budget({THREADS_ENV: "3"}) == 3 == thread_budget({THREADS_ENV: "3"}, shared=True)
    assert thread_budget({}) == available_cores()  # every core this process may use
    # A run of the embedded instance: its share of the cores the other queue's run may compute on too.
    assert thread_budget({}, shared=True) == max(1, available_cores() // runs_sharing_cores())
    assert runs_sharing_cores() in (1, EMBEDDED_CONCURRENT_RUNS)
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(ValueError, match=f"{THREADS_ENV} must be"):
            thread_budget({THREADS_ENV: bad})


def test_apply_thread_budget_sets_torch_and_the_environment_of_child_processes(monkeypatch):
    before = torch.get_num_threads()
    for var in (THREADS_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "99")  # so that monkeypatch puts back (or removes) what apply_thread_budget sets
    try:
        assert apply_thread_budget(1) == 1
        assert torch.get_num_threads() == 1
        child = subprocess.run([sys.executable, "-c", "import os; print(os.environ['OMP_NUM_THREADS'])"],
                               capture_output=True, text=True, check=True)
        assert child.stdout.strip() == "1" and os.environ[THREADS_ENV] == "1"
    finally:
        torch.set_num_threads(before)


def test_the_embedded_instance_runs_one_cpu_and_one_gpu_run_at_a_time():
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    limits = {(c["key"], c.get("value")): c["limit"]
              for c in config["run_coordinator"]["config"]["tag_concurrency_limits"] if c["key"] == "frd/queue"}
    assert limits == {("frd/queue", "gpu"): 1, ("frd/queue", "cpu"): 1}
    assert sum(limits.values()) == EMBEDDED_CONCURRENT_RUNS  # what a run's default thread share assumes
