"""Library of the real-control-plane tier (fixtures live in conftest.py): the control plane
handle, the chart install, the operator process, measurements.

A module of its own (not imported from conftest by name): several conftest modules share that name.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SCRIPT = HERE / "controlplane.sh"
VENV_BIN = Path(sys.executable).parent
CHART = ROOT / "charts" / "selfmoa"
RELEASE = "selfmoa"
OPERATOR_NS = "selfmoa-system"
#: The AlignmentRun's namespace in the scenarios (the chart's operator watches all namespaces).
RUN_NS = "team-a"
BUCKET = "selfmoa"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "selfmoa-test", "AWS_SECRET_ACCESS_KEY": "selfmoa-test-secret"}
#: The chart ServiceAccount's user name in the audit log (default release).
SA_USER = f"system:serviceaccount:{OPERATOR_NS}:{RELEASE}"


# ------------------------------------------------------------------------------ measurements

MEASURED: dict[str, Any] = {}


def measure(key: str, value: Any) -> None:
    """Record a number for the end-of-session summary (and measurements.json in basetemp)."""
    MEASURED[key] = value


# ------------------------------------------------------------------------------ control plane


def _rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A process' resident memory (VmRSS), or its peak so far (VmHWM), in MiB; 0 once gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Cluster:
    run_dir: Path
    bin_dir: Path
    server: str
    ca: Path
    admin_token: str
    kubeconfig: Path
    env: dict[str, str] = field(default_factory=dict)

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """The cached kubectl 1.20 (never /usr/bin/kubectl: another version may live there),
        with a discovery cache of this control plane's own (the node tier's is always on
        127.0.0.1:6443: a shared cache would hold an earlier one's resources for 10 minutes)."""
        cmd = [
            str(self.bin_dir / "kubectl"),
            "--kubeconfig",
            str(kubeconfig or self.kubeconfig),
            "--cache-dir",
            str(self.run_dir / "kubectl-cache"),
        ]
        proc = subprocess.run(
            [*cmd, *args], capture_output=True, text=True, input=input, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
        return proc

    def api_client(self, token: str | None = None) -> Any:
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.server
        cfg.ssl_ca_cert = str(self.ca)
        cfg.api_key = {"authorization": f"Bearer {token or self.admin_token}"}
        return client.ApiClient(cfg)

    def token_kubeconfig(self, path: Path, token: str, namespace: str = "default") -> Path:
        """A kubeconfig with only a bearer token (a client cert would win over a token)."""
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca)},
                }
            ],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "test",
                    "context": {"cluster": "test", "user": "user", "namespace": namespace},
                }
            ],
            "current-context": "test",
        }
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return path

    def pids(self) -> dict[str, int]:
        out = {}
        for name in ("etcd", "apiserver", "controller-manager"):
            p = self.run_dir / f"{name}.pid"
            if p.exists():
                out[name] = int(p.read_text())
        return out

    def rss_mib(self) -> dict[str, float]:
        return {name: round(_rss_mib(pid), 1) for name, pid in self.pids().items()}

    def audit(self) -> list[dict[str, Any]]:
        """Every audit event so far (the apiserver logs each request's user, verb, URI, code)."""
        path = self.run_dir / "audit.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def script(*args: str, env: dict[str, str], timeout: float) -> None:
    # Output goes to the terminal (-s) or pytest's capture: the build prints phase lines.
    subprocess.run(["bash", str(SCRIPT), *args], env=env, check=True, timeout=timeout)


def built() -> bool:
    """Whether the cache already holds the control plane (`controlplane.sh built`)."""
    return subprocess.run(["bash", str(SCRIPT), "built"], check=False).returncode == 0


def start_cluster(run_dir: Path, *, build_timeout: float = 30 * 60) -> Cluster:
    """controlplane.sh build (cached: instant) + start in `run_dir`; the handle to it."""
    env = dict(os.environ, SELFMOA_CLUSTER_RUN=str(run_dir))
    t = time.monotonic()
    script("build", env=env, timeout=build_timeout)
    measure("build (cached or cold), s", round(time.monotonic() - t, 1))
    t = time.monotonic()
    try:
        script("start", env=env, timeout=180)
    except BaseException:
        script("stop", env=env, timeout=60)  # whatever it had started
        raise
    measure("start to ready, s", round(time.monotonic() - t, 1))
    exports = subprocess.run(
        ["bash", str(SCRIPT), "env"], env=env, capture_output=True, text=True, check=True
    ).stdout
    bin_dir = Path(exports.split("PATH=")[1].split(":")[0].strip("'\""))
    port = (run_dir / "api.port").read_text().strip()
    c = Cluster(
        run_dir=run_dir,
        bin_dir=bin_dir,
        server=f"https://127.0.0.1:{port}",
        ca=run_dir / "pki" / "ca.crt",
        admin_token=(run_dir / "pki" / "admin.token").read_text().strip(),
        kubeconfig=run_dir / "admin.kubeconfig",
        env=env,
    )
    measure("control plane RSS after start, MiB", c.rss_mib())
    return c


def stop_cluster(c: Cluster, logs: Path | None = None) -> None:
    """Copy the control plane's logs (audit log included) into `logs`, then stop it."""
    measure("control plane RSS at the end, MiB", c.rss_mib())
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
        for f in c.run_dir.glob("*.log"):
            shutil.copy(f, logs / f.name)
    script("stop", env=c.env, timeout=60)


@contextlib.contextmanager
def s3_server(host: str = "127.0.0.1", *, process: bool = False) -> Iterator[dict[str, str]]:
    """moto's S3 server on `host` with the bucket `selfmoa`: endpoint, bucket, keys.

    `process`: in a process of its own, so a benchmark's threads don't share its interpreter
    lock (in this process, its answers wait for them)."""
    from kubelet import free_port
    from moto.server import ThreadedMotoServer

    proc: subprocess.Popen[bytes] | None = None
    if process:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        endpoint = f"http://{host}:{port}"
        wait_until("moto's S3 server", 30, lambda: _answers(endpoint), 0.2)
    else:
        server = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
    s3 = {"endpoint": endpoint, "bucket": BUCKET, **S3_KEYS}
    try:
        s3_client(s3).create_bucket(Bucket=BUCKET)
        yield s3
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        else:
            server.stop()


def s3_client(s3: dict[str, str]) -> Any:
    """A boto3 S3 client of the server `s3_server` gave (its endpoint and keys)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3["endpoint"],
        region_name="us-east-1",
        aws_access_key_id=s3["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3["AWS_SECRET_ACCESS_KEY"],
    )


def _answers(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError:
        return True  # an HTTP answer, whatever its status
    except OSError:
        return False
    return True


@contextlib.contextmanager
def kubelet_player(cluster: Cluster, root: Path) -> Iterator[Any]:
    """The Pod player (kubelet.py) for the operator's children, logging to root/kubelet.log."""
    from kubelet import KubeletPlayer, parse_dockerfile_env

    root.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(root / "kubelet.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("kubelet-player")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    player = KubeletPlayer(
        cluster.api_client(),
        root,
        venv_bin=VENV_BIN,
        # Only the operator's children: the chart's own operator Pod is replaced by a local
        # process (start_operator), so it stays Pending.
        label_selector="app.kubernetes.io/managed-by=selfmoa-operator",
        worker_image=chart_values()["config"]["workerImage"],
        image_env=parse_dockerfile_env(ROOT / "images" / "worker" / "Dockerfile"),
    )
    try:
        with player:
            yield player
    finally:
        logger.removeHandler(handler)
        handler.close()


def prepare_run_namespace(cluster: Cluster, s3: dict[str, str]) -> str:
    """`team-a` with the S3 credentials Secret the runs' spec.storage.secretRef names."""
    cluster.kubectl("create", "namespace", RUN_NS, check=False)
    cluster.kubectl(
        "-n",
        RUN_NS,
        "create",
        "secret",
        "generic",
        "s3-credentials",
        *(f"--from-literal={k}={s3[k]}" for k in S3_KEYS),
    )
    sa_token(cluster, RUN_NS, "default")  # until it exists, Pods in the namespace are refused
    return RUN_NS


# ------------------------------------------------------------------------------ chart


def chart_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())  # type: ignore[no-any-return]


@dataclass
class Installed:
    method: str  # "helm-sdk" or "render+kubectl"
    objects: list[dict[str, Any]]
    sa_token: str
    sa_kubeconfig: Path
    seconds: float


def sa_token(cluster: Cluster, namespace: str, name: str, timeout: float = 60) -> str:
    """The legacy token Secret the token controller makes for a ServiceAccount (1.20)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        proc = cluster.kubectl(
            "-n", namespace, "get", "sa", name, "-o", "jsonpath={.secrets[0].name}", check=False
        )
        secret = proc.stdout.strip()
        if secret:
            data = cluster.kubectl(
                "-n", namespace, "get", "secret", secret, "-o", "jsonpath={.data.token}"
            ).stdout
            if data:
                return base64.b64decode(data).decode()
        time.sleep(0.5)
    raise AssertionError(f"no token Secret for ServiceAccount {namespace}/{name}")


def chart_for_1_20(tmp: Path) -> Path:
    """A copy of the chart whose only change is `kubeVersion`, widened to admit 1.20.

    The chart declares `kubeVersion: >=1.28.0-0`, so Helm (rightly) refuses to install it on this
    1.20 server. Everything else — templates, values, CRD — is the chart as shipped.
    """
    dest = tmp / "selfmoa-chart-1.20"
    if not dest.exists():
        shutil.copytree(CHART, dest)
        meta = dest / "Chart.yaml"
        text, n = re.subn(
            r"^kubeVersion:.*$", 'kubeVersion: ">=1.20.0-0"', meta.read_text(), flags=re.M
        )
        meta.write_text(text if n else text + 'kubeVersion: ">=1.20.0-0"\n')
    return dest


def install_chart(
    cluster: Cluster,
    values: dict[str, Any],
    tmp: Path,
    *,
    release: str = RELEASE,
    namespace: str = OPERATOR_NS,
) -> Installed:
    """`helm install` through the Helm SDK against the real apiserver, as a user would."""
    import helm_python as helm

    t = time.monotonic()
    with helm.Config(kubeconfig_path=str(cluster.kubeconfig), namespace=namespace) as cfg:
        rel = cfg.install(
            str(chart_for_1_20(tmp)), release, values, namespace=namespace, create_namespace=True
        )
    objects = [d for d in yaml.safe_load_all(rel["manifest"]) if d]
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/alignmentruns.selfmoa.dev", "--timeout=60s"
    )
    sa = next(o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount")
    token = sa_token(cluster, namespace, sa)
    kc = cluster.token_kubeconfig(tmp / f"{release}.kubeconfig", token, namespace)
    return Installed("helm-sdk", objects, token, kc, round(time.monotonic() - t, 1))


# ------------------------------------------------------------------------------ operator


@dataclass
class OperatorProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    cmd: list[str]
    env: dict[str, str]
    cwd: Path
    kills: int = 0

    @classmethod
    def spawn(cls, cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> OperatorProcess:
        op = cls(None, log, cmd, env, cwd)  # type: ignore[arg-type]
        op._start()
        return op

    def _start(self) -> None:
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(
                self.cmd,
                env=self.env,
                cwd=self.cwd,
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def peak_rss_mib(self) -> float:
        """The current process' peak resident memory (VmHWM; 0 once it has exited)."""
        return round(_rss_mib(self.proc.pid, "VmHWM"), 1)

    def kill_and_restart(self) -> None:
        """SIGKILL (no clean-up, like a node failure or OOM kill), then a new process."""
        self.proc.kill()
        self.proc.wait()
        self.kills += 1
        with open(self.log, "a") as f:
            f.write(f"---- test: operator SIGKILLed ({self.kills}) and restarted ----\n")
        self._start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_operator(
    cluster: Cluster, chart: Installed, s3: dict[str, str], workdir: Path, name: str = "operator"
) -> OperatorProcess:
    """`selfmoa operator` with the chart Deployment's args, as the chart's ServiceAccount.

    The args come from the installed Deployment (only --config is mapped to a local copy of the
    chart's ConfigMap, and the health/metrics ports to free ones). The S3 keys are given as env,
    as `extraEnv` with a secretKeyRef would in the chart: the operator reads stage manifests.
    """
    from kubelet import free_port

    dep = json.loads(
        cluster.kubectl("-n", OPERATOR_NS, "get", "deploy", RELEASE, "-o", "json").stdout
    )
    container = dep["spec"]["template"]["spec"]["containers"][0]
    config_map = json.loads(
        cluster.kubectl("-n", OPERATOR_NS, "get", "cm", f"{RELEASE}-config", "-o", "json").stdout
    )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(config_map["data"]["config.yaml"])
    args = list(container["args"])
    mapped = {"/etc/selfmoa/config.yaml": str(workdir / "config.yaml")}
    out: list[str] = []
    for i, a in enumerate(args):
        if i and args[i - 1] in ("--health-port", "--metrics-port"):
            out.append(str(free_port()))
        else:
            out.append(mapped.get(a, a))
    cmd = [str(VENV_BIN / "selfmoa"), "operator", *out]
    env = {
        "PATH": f"{VENV_BIN}:/usr/bin:/bin",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "KUBECONFIG": str(chart.sa_kubeconfig),
        "POD_NAMESPACE": OPERATOR_NS,
        "PYTHONUNBUFFERED": "1",
        "AWS_ACCESS_KEY_ID": s3["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": s3["AWS_SECRET_ACCESS_KEY"],
        "AWS_CONFIG_FILE": str(workdir / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "no-aws-credentials"),
    }
    return OperatorProcess.spawn(cmd, env, workdir, workdir / f"{name}.log")


def wait_listening(cluster: Cluster, op: OperatorProcess, timeout: float = 120) -> None:
    """Until the operator has listed AlignmentRuns (Kopf watches right after; the watch's own
    audit line may wait for its first event, up to a minute); raises if it exited."""
    wait_until(
        "the operator to list AlignmentRuns",
        timeout,
        lambda: (
            op.proc.poll() is not None
            or any(
                e["verb"] == "list"
                and (e.get("objectRef") or {}).get("resource") == "alignmentruns"
                for e in operator_requests(cluster)
            )
        ),
        0.5,
    )
    if op.proc.poll() is not None:
        raise RuntimeError(f"the operator exited:\n{op.text()[-3000:]}")


# ------------------------------------------------------------------------------ runs


def operator_requests(cluster: Cluster, user: str = SA_USER) -> list[dict[str, Any]]:
    """The audited requests of the operator process: its ServiceAccount, minus the kubectl
    probes the tests themselves make with the same token (least-privilege checks)."""
    return [
        e
        for e in cluster.audit()
        if e.get("user", {}).get("username") == user
        and not str(e.get("userAgent", "")).startswith("kubectl/")
    ]


def used_permissions(events: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(apiGroup or "core", resource[/subresource], verb) of audited requests."""
    out = set()
    for e in events:
        ref = e.get("objectRef")
        if not ref:
            continue
        resource = ref.get("resource", "")
        if ref.get("subresource"):
            resource += f"/{ref['subresource']}"
        out.add((ref.get("apiGroup") or "core", resource, e["verb"]))
    return out


def s3_storage(s3: dict[str, str]) -> dict[str, str]:
    """spec.storage of a run on the moto store (as in manifests/examples/minio-s3.yaml)."""
    return {
        "uri": f"s3://{s3['bucket']}/runs",
        "endpoint": s3["endpoint"],
        "region": "us-east-1",
        "secretRef": "s3-credentials",
    }


def small_run(name: str, s3: dict[str, str], **spec: Any) -> dict[str, Any]:
    """A one-iteration tiny run on the moto S3 store (spec.storage as in minio-s3.yaml)."""
    body: dict[str, Any] = {
        "policy": {"model": "selfmoa/tiny"},
        "safetyReset": {"enabled": False},
        "redTeam": {"promptsPerIteration": 16},
        "sampling": {"responsesPerPrompt": 2, "maxNewTokens": 16},
        "judges": [
            {
                "name": "refusal-a",
                "objective": "safety",
                "kind": "heuristic",
                "noise": 0.15,
                "seed": 1,
            },
            {
                "name": "helpful-a",
                "objective": "helpfulness",
                "kind": "heuristic",
                "noise": 0.15,
                "seed": 3,
            },
        ],
        "training": {
            "learningRate": 0.002,
            "batchSize": 8,
            "maxLength": 128,
            "lora": {"r": 8, "alpha": 16},
        },
        "evaluation": {"goldJudge": True, "maxPrompts": 16},
        "iterations": 1,
        "storage": s3_storage(s3),
        "serving": {"engine": "transformers"},
        "trainer": {
            "gpus": 0,
            "resources": {"cpu": "1", "memory": "2Gi"},
            "backoffLimit": 1,
            "activeDeadlineSeconds": 1800,
        },
    }
    body.update(spec)
    return {
        "apiVersion": "selfmoa.dev/v1alpha1",
        "kind": "AlignmentRun",
        "metadata": {"name": name, "namespace": RUN_NS},
        "spec": body,
    }


def get_run(cluster: Cluster, name: str) -> dict[str, Any]:
    """The AlignmentRun as `kubectl get -o json` shows it."""
    out = cluster.kubectl("-n", RUN_NS, "get", "arun", name, "-o", "json").stdout
    return dict(json.loads(out))


def final_status(cluster: Cluster, name: str) -> dict[str, Any] | None:
    """The run's status once it is Succeeded or Failed; None while it goes on."""
    status: dict[str, Any] = get_run(cluster, name).get("status") or {}
    return status if status.get("phase") in ("Succeeded", "Failed") else None


def children(cluster: Cluster, kind: str, run: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("-n", RUN_NS, "get", kind, "-l", f"selfmoa.dev/run={run}", "-o", "json")
    return list(json.loads(out.stdout)["items"])


def wait_until(what: str, timeout: float, check: Any, period: float = 1.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(period)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
