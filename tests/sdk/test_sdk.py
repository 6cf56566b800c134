"""The Kubeflow Python SDK (PyPI `kubeflow`, pinned in hack/sdk-requirements.txt), unchanged, as a
data scientist drives this operator: the runtimes, `train()` on an MPI runtime with the trainers
and options the SDK offers for it, status through `get_job` and `wait_for_job_status`, jobs by
runtime, logs of the launcher and of a worker (followed while the job runs), Events,
`delete_job`, and the SDK's errors. tests/realnode_clients.rs runs it with pytest against the
bed's control plane, with every pod on the real node, as a tenant holding the `edit` role.

Where the SDK's view of an MPI job differs from the operator's, the test pins down what the SDK
does and docs/sdk.md says so."""

import os
import threading
import time

import pytest
from conftest import DEADLINE, IMAGE, NAMESPACE, on_real_node
from kubeflow.trainer import (
    CustomTrainer,
    CustomTrainerContainer,
    Initializer,
    S3DatasetInitializer,
    S3ModelInitializer,
)
from kubeflow.trainer.options import Annotations, Labels, Name, TrainerCommand

SHIPPED = {"mpi-openmpi", "mpi-mpich", "mpi-intel"}


def test_list_runtimes_shows_the_shipped_mpi_runtimes(trainer):
    runtimes = {r.name: r for r in trainer.list_runtimes()}
    assert SHIPPED <= runtimes.keys(), runtimes.keys()
    for name in SHIPPED:
        runtime = runtimes[name]
        assert runtime.kind.value == "ClusterTrainingRuntime"
        assert runtime.trainer.framework == "mpi"
        assert runtime.trainer.num_nodes == 2
        assert runtime.trainer.command[0] == "mpirun"


def test_an_unknown_runtime_or_job_is_an_error(trainer):
    with pytest.raises(RuntimeError):
        trainer.get_runtime("no-such-runtime")
    with pytest.raises(RuntimeError, match="no-such-job"):
        trainer.get_job("no-such-job")


def test_a_request_the_operator_refuses_is_an_error_naming_the_field(trainer):
    """The webhook refuses a job over the per-job pod cap; the SDK raises, with the API server's
    answer (which names the field and the limit) as the cause, and nothing is created."""
    with pytest.raises(RuntimeError) as refused:
        trainer.train(
            runtime=trainer.get_runtime("mpi-openmpi"),
            trainer=CustomTrainerContainer(image=IMAGE, num_nodes=5000),
            options=[Name("sdk-too-big")],
        )
    cause = str(refused.value.__cause__)
    assert "spec.trainer.numNodes" in cause and "4096" in cause, cause
    assert "sdk-too-big" not in {j.name for j in trainer.list_jobs()}


class Followed:
    """Follows a step's log with `get_job_logs(follow=True)` in a thread from when the step runs."""

    def __init__(self, trainer, job, step):
        self.lines = []
        self.error = None
        self.thread = threading.Thread(target=self._follow, args=(trainer, job, step), daemon=True)
        self.thread.start()

    def _follow(self, trainer, job, step):
        try:
            for line in trainer.get_job_logs(job, step=step, follow=True):
                self.lines.append(line)
        except Exception as e:  # noqa: BLE001 - reported by the test that reads it
            self.error = e

    def finish(self):
        """Waits until the stream ends, as it does when the container stops."""
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), f"still following after {DEADLINE}s: {self.lines[-5:]}"
        assert self.error is None, self.error
        return self.lines


class Run:
    """A job submitted with `train()` and waited for, with what the SDK showed on the way."""

    def __init__(self, trainer, core, name):
        self.name = name
        self.statuses = []
        self.steps = {}
        self.followed = {}
        self.worker = None
        self.job = trainer.wait_for_job_status(
            name,
            {"Complete"},
            timeout=DEADLINE,
            polling_interval=1,
            callbacks=[lambda job: self._saw(trainer, core, job)],
        )

    def _saw(self, trainer, core, job):
        if not self.statuses or self.statuses[-1] != job.status:
            self.statuses.append(job.status)
        for step in job.steps:
            self.steps.setdefault(step.name, set()).add(step.status)
            if step.status == "Running" and step.name in ("node-0", "node-1"):
                self.followed.setdefault(step.name, Followed(trainer, self.name, step.name))
            if step.status == "Running" and step.name == "node-1" and self.worker is None:
                # Workers are gone once the job is complete: look at one while it runs.
                self.worker = core.read_namespaced_pod(step.pod_name, NAMESPACE)


@pytest.fixture(scope="module")
def digits(trainer, core):
    """Real data-parallel training (the images' /home/mpiuser/train) from an image, with every
    option the SDK has for a container trainer on an MPI runtime."""
    name = trainer.train(
        runtime=trainer.get_runtime("mpi-openmpi"),
        trainer=CustomTrainerContainer(
            image=IMAGE,
            num_nodes=2,
            resources_per_node={"cpu": "250m", "memory": "512Mi"},
            env={"SDK_GREETING": "hello from the sdk"},
        ),
        options=[
            Name("sdk-digits"),
            Labels({"team": "sdk"}),
            Annotations({"sdk.test/purpose": "contract"}),
            TrainerCommand(["mpirun", "-n", "2", "/home/mpiuser/train", "--epochs", "8", "--target", "0.5"]),
            on_real_node(),
        ],
    )
    assert name == "sdk-digits"
    return Run(trainer, core, name)


def test_train_runs_a_container_on_an_mpi_runtime_to_complete(digits, core, custom):
    assert digits.job.status == "Complete", digits.statuses
    # The SDK says Created until every node step runs. It counts the launcher (its step `node-0`)
    # with the workers (`node-1`, `node-2`) but compares with numNodes (2), so an MPI job shows
    # Running only while its launcher is not yet running, if a poll falls there; and Created
    # again until it ends. Only that order is certain.
    assert digits.statuses[0] == "Created" and digits.statuses[-1] == "Complete", digits.statuses
    assert set(digits.statuses) <= {"Created", "Running", "Complete"}, digits.statuses
    assert {"node-0", "node-1", "node-2"} <= digits.steps.keys(), digits.steps
    assert "Succeeded" in digits.steps["node-0"], digits.steps
    # The options reached the pods.
    job = custom.get_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", NAMESPACE, "trainjobs", digits.name)
    assert job["metadata"]["labels"]["team"] == "sdk"
    assert job["metadata"]["annotations"]["sdk.test/purpose"] == "contract"
    launcher = core.read_namespaced_pod(f"{digits.name}-launcher-0-0", NAMESPACE)
    env = {e.name: e.value for e in launcher.spec.containers[0].env}
    assert env["SDK_GREETING"] == "hello from the sdk"
    worker = digits.worker.spec.containers[0]
    assert {e.name: e.value for e in worker.env}["SDK_GREETING"] == "hello from the sdk"
    assert worker.resources.limits == {"cpu": "250m", "memory": "512Mi"}, worker.resources
    assert worker.image == IMAGE


def test_logs_of_the_launcher_and_a_worker_followed_while_the_job_ran(digits, trainer):
    launcher = digits.followed["node-0"].finish()
    assert any(line.startswith("final accuracy") and line.endswith("reached") for line in launcher), launcher
    assert any(line.startswith("rank 0 of 2") for line in launcher), launcher
    worker = digits.followed["node-1"].finish()
    assert any("Server listening on" in line for line in worker), worker
    assert any("Accepted publickey for mpiuser" in line for line in worker), worker
    # Read again after the end: the launcher's log is kept with its pod.
    assert list(trainer.get_job_logs(digits.name, step="node-0")) == launcher


def test_events_of_the_job_are_the_operators(digits, trainer):
    events = trainer.get_job_events(digits.name)
    mine = [e for e in events if e.involved_object_kind == "TrainJob"]
    assert any(e.reason == "Completed" for e in mine), [(e.reason, e.message) for e in events]


def test_list_jobs_by_runtime(digits, trainer):
    openmpi = trainer.get_runtime("mpi-openmpi")
    mpich = trainer.get_runtime("mpi-mpich")
    assert digits.name in {j.name for j in trainer.list_jobs(runtime=openmpi)}
    assert digits.name not in {j.name for j in trainer.list_jobs(runtime=mpich)}


def test_custom_trainer_runs_a_python_function_on_every_rank(trainer):
    """The SDK's function trainer: it ships the function's source in the launch line, and each
    rank runs `python` on it (the bed's images have `python`, as the SDK expects)."""

    def allreduce():
        import socket

        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        total = comm.allreduce(comm.Get_rank() + 1)
        print(f"rank {comm.Get_rank()} of {comm.Get_size()} on {socket.gethostname()} sum {total}", flush=True)

    name = trainer.train(
        runtime=trainer.get_runtime("mpi-openmpi"),
        trainer=CustomTrainer(func=allreduce, image=IMAGE, num_nodes=2),
        options=[Name("sdk-function"), on_real_node()],
    )
    job = trainer.wait_for_job_status(name, {"Complete", "Failed"}, timeout=DEADLINE, polling_interval=1)
    log = list(trainer.get_job_logs(name, step="node-0"))
    assert job.status == "Complete", log
    ranks = sorted(line for line in log if line.startswith("rank "))
    assert [r.split(" on ")[0] for r in ranks] == ["rank 0 of 2", "rank 1 of 2"], log
    assert all(r.endswith("sum 3") for r in ranks), log
    # Each rank ran on its own worker.
    assert {r.split(" on ")[1].split()[0] for r in ranks} == {f"{name}-node-0-0", f"{name}-node-0-1"}, log


def test_s3_initializers_fill_the_jobs_volume_before_it_trains(trainer, core):
    """The SDK's S3 initializers on mpi-openmpi-initializers: the endpoint and keys it puts in
    spec.initializer's env are what the initializer image reads; the job trains on the data set
    and from the weights they downloaded (tests/realnode_clients.rs put them in the bucket)."""
    bucket = os.environ["TRAINJOB_TEST_S3_BUCKET"]
    s3 = {
        "endpoint": os.environ["TRAINJOB_TEST_S3_ENDPOINT"],
        "access_key_id": os.environ["TRAINJOB_TEST_S3_ACCESS_KEY"],
        "secret_access_key": os.environ["TRAINJOB_TEST_S3_SECRET_KEY"],
    }
    command = ["mpirun", "-n", "2", "/home/mpiuser/train", "--epochs", "8", "--target", "0.5",
               "--data", "/workspace/dataset", "--init", "/workspace/model/init.npz"]
    name = trainer.train(
        runtime=trainer.get_runtime("mpi-openmpi-initializers"),
        initializer=Initializer(
            dataset=S3DatasetInitializer(storage_uri=f"s3://{bucket}/digits", **s3),
            model=S3ModelInitializer(storage_uri=f"s3://{bucket}/init", **s3),
        ),
        trainer=CustomTrainerContainer(image=IMAGE, num_nodes=2),
        options=[
            Name("sdk-s3"),
            TrainerCommand(command),
            on_real_node(("dataset-initializer", "model-initializer", "node", "launcher")),
        ],
    )
    job = trainer.wait_for_job_status(name, {"Complete", "Failed"}, timeout=DEADLINE, polling_interval=1)
    log = core.read_namespaced_pod_log(f"{name}-launcher-0-0", NAMESPACE, container="node").splitlines()
    assert job.status == "Complete", log
    assert "data file /workspace/dataset/digits.csv.gz" in log, log
    assert any(line.startswith("init from /workspace/model/init.npz sha256 ") for line in log), log
    for step, prefix in (("dataset-initializer", "digits"), ("model-initializer", "init")):
        said = core.read_namespaced_pod_log(f"{name}-{step}-0-0", NAMESPACE, container=step)
        assert f"from s3://{bucket}/{prefix} into /workspace/" in said, said
        assert s3["secret_access_key"] not in said


def test_delete_job_stops_a_running_job_and_its_pods(trainer, core):
    name = trainer.train(
        runtime=trainer.get_runtime("mpi-openmpi"),
        trainer=CustomTrainerContainer(image=IMAGE, num_nodes=2),
        options=[
            Name("sdk-deleted"),
            TrainerCommand(["mpirun", "-n", "2", "/home/mpiuser/train", "--epochs", "500", "--epoch-seconds", "1"]),
            on_real_node(),
        ],
    )
    deadline = time.monotonic() + DEADLINE
    while not any(s.name == "node-0" and s.status == "Running" for s in trainer.get_job(name).steps):
        assert time.monotonic() < deadline, trainer.get_job(name)
        time.sleep(1)
    trainer.delete_job(name)
    while True:
        left = core.list_namespaced_pod(NAMESPACE, label_selector=f"trainer.kubeflow.org/trainjob-name={name}")
        secrets = core.list_namespaced_secret(NAMESPACE).items
        gone = not left.items and not any(s.metadata.name.startswith(name) for s in secrets)
        if gone and name not in {j.name for j in trainer.list_jobs()}:
            break
        assert time.monotonic() < deadline, [p.metadata.name for p in left.items]
        time.sleep(1)
    with pytest.raises(RuntimeError):
        trainer.get_job(name)
