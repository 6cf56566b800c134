"""What every test of the Kubeflow SDK suite shares: the SDK's client as the tenant whose
kubeconfig tests/realnode_clients.rs passes in, the namespace it may use, and the option that puts
a job's pods on the bed's real node."""

import os

import pytest
from kubeflow.common.types import KubernetesBackendConfig
from kubeflow.trainer import TrainerClient
from kubeflow.trainer.options import (
    JobSetSpecPatch,
    JobSetTemplatePatch,
    JobSpecPatch,
    JobTemplatePatch,
    PodSpecPatch,
    PodTemplatePatch,
    ReplicatedJobPatch,
    RuntimePatch,
    TrainingRuntimeSpecPatch,
)
from kubernetes import client as k8s
from kubernetes import config as k8s_config

NAMESPACE = os.environ["TRAINJOB_TEST_NAMESPACE"]
# An MPI image of the bed (Open MPI 4): sshd, mpi4py, /home/mpiuser/pi and /home/mpiuser/train.
IMAGE = os.environ["TRAINJOB_TEST_IMAGE"]
# The label (and taint) of the real node, where pods really run.
REAL_NODE = os.environ["TRAINJOB_TEST_REAL_NODE"]
# How long one MPI job may take on the shared 2-core node.
DEADLINE = 300


@pytest.fixture(scope="session")
def trainer() -> TrainerClient:
    config = KubernetesBackendConfig(namespace=NAMESPACE, config_file=os.environ["KUBECONFIG"])
    return TrainerClient(backend_config=config)


@pytest.fixture(scope="session")
def kube() -> k8s.ApiClient:
    """The same user's plain Kubernetes client, to look behind the SDK."""
    return k8s_config.new_client_from_config(config_file=os.environ["KUBECONFIG"])


@pytest.fixture(scope="session")
def core(kube) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(kube)


@pytest.fixture(scope="session")
def custom(kube) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(kube)


def on_real_node(steps=("node", "launcher")) -> RuntimePatch:
    """The SDK's own RuntimePatch option, placing the pods of `steps` (by default the launcher and
    the workers) on the real node."""
    pod = PodTemplatePatch(
        spec=PodSpecPatch(
            node_selector={REAL_NODE: "true"},
            tolerations=[{"key": REAL_NODE, "operator": "Exists", "effect": "NoSchedule"}],
        )
    )
    jobs = [
        ReplicatedJobPatch(name=name, template=JobTemplatePatch(spec=JobSpecPatch(template=pod)))
        for name in steps
    ]
    spec = JobSetSpecPatch(replicated_jobs=jobs)
    return RuntimePatch(
        training_runtime_spec=TrainingRuntimeSpecPatch(template=JobSetTemplatePatch(spec=spec))
    )
