"""A stand-in kubelet for the real control plane: it runs Pods as local processes.

There is no kubelet and no scheduler in the test cluster (tests/cluster/controlplane.sh), so the
Pods the job and deployment controllers create would stay Pending forever. `KubeletPlayer`
watches them through the real API and *runs* them, so that what the operator writes into a Pod
spec (command, args, env, Secret references, volumes) is exactly what the stage process gets: a
wrong env name, arg or mount fails the test the way it would fail on a node.

What a Pod gets, and how it maps onto this machine (everything per Pod lives under
`<root>/<namespace>/<pod>-<uid8>/`):

- **Which Pods.** Those the label selector picks (the tests: the operator's children,
  `app.kubernetes.io/managed-by=selfmoa-operator`) that are unbound (no nodeName) and Pending.
- **Commands.** Each container's `command` + `args` (after `$(VAR)` expansion, as the kubelet
  does), as its own process: init containers first, one after the other, then all containers at
  once (sidecars included). The image is not pulled: commands run with the repository's
  virtualenv first on PATH, so `selfmoa ...` is this checkout's `selfmoa`. A container without
  `command` (the image's ENTRYPOINT is unknown here) stays Waiting with
  CreateContainerConfigError.
- **Serving pods.** vLLM cannot run here (no GPU, no wheel), so the one command that means vLLM,
  `python3 -m vllm.entrypoints.openai.api_server`, is replaced by `selfmoa serve` (the project's
  CPU stand-in that speaks the same OpenAI subset, incl. `/v1/load_lora_adapter`) with the same
  `--model` and `--served-model-name`, on the Pod's IP and the same `--port`. vLLM-only flags
  (`--enable-lora`, `--max-loras`, ...) are dropped and logged. This substitution is the only
  rewrite of a command the player does.
- **Filesystem.** A private root per Pod (`rootfs/`); the working dir is `rootfs/<workingDir>`.
  Volumes: `emptyDir` -> `volumes/<name>/` (shared by the Pod's containers only);
  `configMap`/`secret` -> their keys written as files under `volumes/<name>/` from the real API;
  `persistentVolumeClaim` -> `<root>/pvc/<namespace>/<claim>/` (shared by Pods naming the same
  claim); `hostPath` is refused. A process can't be remounted, so *paths are mapped instead*:
  an env value or arg that is an absolute path (also after `--flag=` and in `file://` URIs) is
  rewritten to the volume's local dir when it lies under a `volumeMount`, else into `rootfs/`.
  So `HOME=/work` becomes `.../volumes/work`, and two Pods never share a cache or a store path
  unless they declare a shared volume.
- **Image environment.** `image_env` (the worker Dockerfile's ENV lines but PATH) is applied under
  the Pod's env for containers of `worker_image`, then path-mapped like the rest. `TMPDIR` points at
  `rootfs/tmp` (the image's private /tmp). Nothing of the test process' own environment leaks in
  except PATH's system part and LANG.
- **Termination message.** `terminationMessagePath` maps to `termination-log` in the Pod dir;
  the container learns the mapped location from `SELFMOA_TERMINATION_LOG` (the stage program's
  override of `/dev/termination-log`: the one env var the player adds that a kubelet wouldn't,
  because writing the host's /dev/termination-log is not an option). On exit the file's content
  (<= 4096 bytes) becomes `state.terminated.message`; with `FallbackToLogsOnError`, an empty file
  and a non-zero exit, the log tail (last 80 lines, <= 2048 bytes) does, as in the kubelet.
- **Network.** Each Pod gets a loopback address of its own as `status.podIP` (127.1.0.1,
  127.1.0.2, ...: Linux answers on all of 127/8), so containers listen on their declared ports
  without clashing. A Pod's own addresses in its args and env values (`0.0.0.0`, `127.0.0.1`,
  `localhost`, alone or as a URL host) mean the Pod itself — containers of a Pod share a network
  namespace — and are mapped to its IP: a sidecar's `http://127.0.0.1:8000` reaches its server.
  Services are reached through an HTTP proxy (`ServiceProxy`) that every process gets as
  `HTTP_PROXY` (`NO_PROXY`: the Pod's own IP and the host's loopback, where the tests' S3 server
  stands "outside the cluster"). It plays cluster DNS + kube-proxy for
  `http://<svc>.<ns>.svc[.cluster.local]:<port>`: it reads the *real* Service (port ->
  targetPort), picks a Running+Ready Pod with the Service's label selector, resolves a named
  targetPort through that Pod's `containerPorts`, and forwards to podIP:port (Pod IPs are routed
  directly too). A wrong selector, port name or number fails like on a cluster (no endpoint:
  HTTP 503 from the proxy). Plain HTTP only; other hosts get 502 (no egress).
- **Status.** Written like a kubelet, with PUT on `pods/status`: Running with running
  containerStatuses when started (each Ready when its readinessProbe, if any, passes: httpGet and
  tcpSocket probes are really made against podIP:port, exec probes really run in the
  container's environment), then Succeeded/Failed with `state.terminated.exitCode`, reason
  Completed/Error and the message; init containers in `initContainerStatuses`. `restartPolicy:
  Always/OnFailure` restarts a container (restartCount, lastState, 10 s backoff doubling to
  5 min). A missing Secret/ConfigMap (key) leaves the Pod Pending with
  `CreateContainerConfigError`, retried.
- **Deletion.** A Pod that is deleted (or gets a deletionTimestamp) has its process group killed
  (SIGTERM, then SIGKILL after min(grace, 5 s)).

Not emulated: scheduling (Pods keep an empty nodeName, so deletion is immediate), resource
limits, `runAsUser` (this machine's Python lives under /root, unreadable to other uids),
`readOnlyRootFilesystem`, liveness and startup probes, service-link env vars, `kubectl logs` (no
kubelet API: each container's log is `<container>.log` in the Pod dir).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("kubelet-player")

VLLM_COMMAND = ["python3", "-m", "vllm.entrypoints.openai.api_server"]


def _load_vllm_standin() -> Any:
    """The node tier's vLLM stand-in (vLLM's args to `selfmoa serve`'s), loaded by path under
    a name of its own: a package named `vllm` on sys.path would shadow a real one."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "node" / "vllm_standin" / "vllm" / "entrypoints"
    spec = importlib.util.spec_from_file_location(
        "selfmoa_vllm_standin", path / "openai" / "api_server.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


VLLM_STANDIN = _load_vllm_standin()
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
MAX_MESSAGE = 4096
FALLBACK_LINES = 80
FALLBACK_BYTES = 2048


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_dockerfile_env(path: Path) -> dict[str, str]:
    """The `ENV k=v ...` settings of a Dockerfile (what the image's processes start with)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.upper().startswith("ENV "):
            continue
        for token in re.findall(r'(\w+)=("[^"]*"|\S+)', line[4:]):
            env[token[0]] = token[1].strip('"')
    return env


def expand_vars(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: known names expand, `$$` escapes, unknown ones stay."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0).startswith("$$"):
            return m.group(0)[1:]
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return re.sub(r"\$\$\([A-Za-z_][A-Za-z0-9_.-]*\)|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, value)


class ConfigError(Exception):
    """The container can't be configured yet (missing Secret/ConfigMap): CreateContainerConfigError."""


@dataclass
class PodFS:
    """The local directories standing for one Pod's filesystem."""

    root: Path  # the Pod dir
    mounts: list[tuple[str, Path]] = field(default_factory=list)  # (mountPath, local dir)

    @property
    def rootfs(self) -> Path:
        return self.root / "rootfs"

    def map_path(self, path: str) -> str:
        """Container path -> local path (under a mount when it is in one, else in rootfs)."""
        for mount_path, local in sorted(self.mounts, key=lambda m: -len(m[0])):
            mp = mount_path.rstrip("/") or "/"
            if path == mp or path.startswith(mp.rstrip("/") + "/"):
                return str(local / path[len(mp) :].lstrip("/")).rstrip("/") or str(local)
        return str(self.rootfs / path.lstrip("/"))

    def map_termination(self, c: Mapping[str, Any]) -> Path:
        """The container's terminationMessagePath -> `termination-log.<container>` in the Pod dir."""
        return self.root / f"termination-log.{c['name']}"

    def map_value(self, value: str) -> str:
        """Map an env value or arg: an absolute path, `--flag=/path`, or `file:///path`."""
        if value.startswith("file:///"):
            return "file://" + self.map_path(value[len("file://") :])
        if value.startswith("/"):
            return self.map_path(value)
        m = re.match(r"^(--?[\w.-]+=)(/.*|file:///.*)$", value)
        if m:
            return m.group(1) + self.map_value(m.group(2))
        return value


class Api:
    """The few API calls the player makes, as plain dicts (kubernetes client underneath)."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)

    @staticmethod
    def _json(resp: Any) -> dict[str, Any]:
        return json.loads(resp.data)  # type: ignore[no-any-return]

    def pod(self, ns: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._json(self.core.read_namespaced_pod(name, ns, _preload_content=False))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def replace_status(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        # A dict body is sent as-is (the typed client would expect a V1Pod).
        self.core.replace_namespaced_pod_status(
            meta["name"],
            meta["namespace"],
            pod,  # type: ignore[arg-type]
            _preload_content=False,
        )

    def secret(self, ns: str, name: str) -> dict[str, str] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            obj = self._json(self.core.read_namespaced_secret(name, ns, _preload_content=False))
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}

    def config_map(self, ns: str, name: str) -> dict[str, str] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            obj = self._json(self.core.read_namespaced_config_map(name, ns, _preload_content=False))
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return dict(obj.get("data") or {})

    def service(self, ns: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._json(self.core.read_namespaced_service(name, ns, _preload_content=False))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def pods(self, ns: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        sel = ",".join(f"{k}={v}" for k, v in selector.items())
        resp = self.core.list_namespaced_pod(ns, label_selector=sel, _preload_content=False)
        return list(self._json(resp).get("items") or [])


@dataclass
class Ctr:
    """One container of a played Pod: what it runs and what the kubelet reports about it."""

    spec: dict[str, Any]
    env: dict[str, str]
    cmd: list[str]
    proc: subprocess.Popen[bytes] | None = None
    ready: bool = False
    restarts: int = 0
    started: str = ""
    waiting: tuple[str, str] | None = None
    terminated: dict[str, Any] | None = None  # the current state, once it exited for good
    last_terminated: dict[str, Any] | None = None  # the previous run, after a restart

    @property
    def name(self) -> str:
        return str(self.spec["name"])


class PodRunner:
    """One played Pod: init containers in order, then every container at once; restarts per
    restartPolicy; probes; kubelet-style status; kill on deletion."""

    def __init__(self, player: KubeletPlayer, pod: dict[str, Any], ip: str) -> None:
        self.player = player
        self.api = player.api
        meta = pod["metadata"]
        self.ns: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.spec: dict[str, Any] = pod["spec"]
        self.labels: dict[str, str] = dict(meta.get("labels") or {})
        self.ip = ip
        self.fs = PodFS(player.root / self.ns / f"{self.name}-{self.uid[:8]}")
        self.inits: list[Ctr] = []
        self.containers: list[Ctr] = []
        self.stopped = threading.Event()
        self.started_at = now()
        self._status_lock = threading.Lock()
        self.thread = threading.Thread(target=self._main, name=f"pod-{self.name}", daemon=True)

    @property
    def procs(self) -> list[subprocess.Popen[bytes]]:
        return [c.proc for c in self.containers if c.proc is not None]

    @property
    def ready(self) -> bool:
        return bool(self.containers) and all(c.ready for c in self.containers)

    # ------------------------------------------------------------------ set-up

    def _volumes(self) -> None:
        vols = {v["name"]: v for v in self.spec.get("volumes") or []}
        local: dict[str, Path] = {}
        for name, vol in vols.items():
            if "emptyDir" in vol:
                d = self.fs.root / "volumes" / name
                d.mkdir(parents=True, exist_ok=True)
            elif "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                d = self.player.root / "pvc" / self.ns / claim
                d.mkdir(parents=True, exist_ok=True)
            elif "configMap" in vol or "secret" in vol:
                d = self.fs.root / "volumes" / name
                if "configMap" in vol:
                    data = self.api.config_map(self.ns, vol["configMap"]["name"])
                    what = f'configmap "{vol["configMap"]["name"]}"'
                    optional = vol["configMap"].get("optional", False)
                else:
                    data = self.api.secret(self.ns, vol["secret"]["secretName"])
                    what = f'secret "{vol["secret"]["secretName"]}"'
                    optional = vol["secret"].get("optional", False)
                if data is None and not optional:
                    raise ConfigError(f"{what} not found")
                d.mkdir(parents=True, exist_ok=True)
                for key, text in (data or {}).items():
                    (d / key).write_text(text)
            elif "projected" in vol or "downwardAPI" in vol:
                d = self.fs.root / "volumes" / name  # empty: nothing the operator's Pods read
                d.mkdir(parents=True, exist_ok=True)
            else:
                raise ConfigError(f"volume {name}: type not supported by the player: {list(vol)}")
            local[name] = d
        self.fs.mounts.clear()
        for c in [*(self.spec.get("initContainers") or []), *self.spec["containers"]]:
            for m in c.get("volumeMounts") or []:
                if m["name"] not in local:
                    raise ConfigError(f"volumeMount {m['name']}: no such volume")
                target = local[m["name"]] / m.get("subPath", "")
                target.mkdir(parents=True, exist_ok=True)
                mount = (m["mountPath"], target)
                if mount not in self.fs.mounts:
                    self.fs.mounts.append(mount)

    def _map(self, value: str) -> str:
        """A container-side value as this machine sees it: paths, then the Pod's own address."""
        return map_host(self.fs.map_value(value), self.ip)

    def _env(self, c: dict[str, Any]) -> dict[str, str]:
        """The container's env, resolved from the real API, then mapped."""
        env: dict[str, str] = {}
        if c.get("image") == self.player.worker_image:
            # All but PATH: the image's names its virtualenv (/opt/selfmoa/bin), which the
            # repository's virtualenv plays here, first on the PATH the player gives.
            env.update({k: v for k, v in self.player.image_env.items() if k != "PATH"})
        for src in c.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "secretRef" in src:
                data = self.api.secret(self.ns, src["secretRef"]["name"])
                what = f'secret "{src["secretRef"]["name"]}"'
                optional = src["secretRef"].get("optional", False)
            else:
                data = self.api.config_map(self.ns, src["configMapRef"]["name"])
                what = f'configmap "{src["configMapRef"]["name"]}"'
                optional = src["configMapRef"].get("optional", False)
            if data is None and not optional:
                raise ConfigError(f"{what} not found")
            env.update({prefix + k: v for k, v in (data or {}).items()})
        for var in c.get("env") or []:
            name = var["name"]
            if "valueFrom" not in var:
                env[name] = expand_vars(var.get("value", ""), env)
                continue
            vf = var["valueFrom"]
            if "secretKeyRef" in vf or "configMapKeyRef" in vf:
                kind = "secret" if "secretKeyRef" in vf else "configmap"
                ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
                data = (
                    self.api.secret(self.ns, ref["name"])
                    if kind == "secret"
                    else self.api.config_map(self.ns, ref["name"])
                )
                if data is None or ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    if data is None:
                        raise ConfigError(f'{kind} "{ref["name"]}" not found')
                    raise ConfigError(
                        f"couldn't find key {ref['key']} in {kind.title()} {self.ns}/{ref['name']}"
                    )
                env[name] = data[ref["key"]]
            elif "fieldRef" in vf:
                env[name] = self._field(vf["fieldRef"]["fieldPath"])
            else:
                raise ConfigError(f"env {name}: valueFrom {list(vf)} not supported by the player")
        return {k: self._map(v) for k, v in env.items()}

    def _field(self, path: str) -> str:
        simple = {
            "metadata.name": self.name,
            "metadata.namespace": self.ns,
            "metadata.uid": self.uid,
            "spec.nodeName": "",
            "spec.serviceAccountName": self.spec.get("serviceAccountName", "default"),
            "status.podIP": self.ip,
            "status.hostIP": "127.0.0.1",
        }
        if path in simple:
            return str(simple[path])
        m = re.match(r"metadata\.labels\['(.+)'\]", path)
        if m:
            return self.labels.get(m.group(1), "")
        raise ConfigError(f"fieldRef {path} not supported by the player")

    def _command(self, c: dict[str, Any], env: Mapping[str, str]) -> list[str]:
        if not c.get("command"):
            raise ConfigError("no command: the image's ENTRYPOINT is unknown to the player")
        command = [expand_vars(x, env) for x in c["command"]]
        args = [expand_vars(x, env) for x in c.get("args") or []]
        if command == VLLM_COMMAND:
            return self._serve_command(args)
        return [self._map(x) for x in command + args]

    def _serve_command(self, args: list[str]) -> list[str]:
        """vLLM's command as `selfmoa serve` on the same port (see the module docstring)."""
        command, dropped = VLLM_STANDIN.serve_command(args, host=self.ip)
        if dropped:
            log.info("%s/%s: vLLM flags not used by selfmoa serve: %s", self.ns, self.name, dropped)
        # Values are paths of the Pod's filesystem (a model in a volume): mapped like any other.
        return [self._map(x) for x in command]

    def _process_env(self, c: dict[str, Any]) -> dict[str, str]:
        # The Pod's own address is direct; everything else goes through the Service proxy.
        no_proxy = f"{self.ip},127.0.0.1,localhost"
        env = {
            "PATH": f"{self.player.venv_bin}:/usr/local/bin:/usr/bin:/bin",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOSTNAME": self.name,
            "HOME": str(self.fs.rootfs / "root"),
            "TMPDIR": str(self.fs.rootfs / "tmp"),
            **self.player.network_env,
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        }
        env.update(self._env(c))
        home = Path(env["HOME"])
        if home.is_relative_to(self.fs.rootfs):
            home.mkdir(parents=True, exist_ok=True)  # the image's home directory exists
        env["SELFMOA_TERMINATION_LOG"] = str(self.fs.map_termination(c))
        return env

    def _plan(self, c: dict[str, Any]) -> Ctr:
        env = self._process_env(c)
        return Ctr(c, env, self._command(c, env))

    # ------------------------------------------------------------------ run

    def _main(self) -> None:
        try:
            self._run()
        except Exception:  # a player bug must not kill the watcher: log it, mark the Pod
            log.exception("%s/%s: player error", self.ns, self.name)
            with contextlib.suppress(Exception):
                self._write_status(phase="Failed", reason="PlayerError")

    def _run(self) -> None:
        # Configuration (volumes, env) retried like the kubelet does while a Secret is missing.
        delay = 1.0
        while not self.stopped.is_set():
            try:
                for d in (self.fs.rootfs / "tmp", self.fs.rootfs / "root"):
                    d.mkdir(parents=True, exist_ok=True)
                self._volumes()
                self.inits = [self._plan(c) for c in self.spec.get("initContainers") or []]
                self.containers = [self._plan(c) for c in self.spec["containers"]]
                break
            except ConfigError as e:
                log.info("%s/%s: CreateContainerConfigError: %s", self.ns, self.name, e)
                self.containers = [
                    Ctr(c, {}, [], waiting=("CreateContainerConfigError", str(e)))
                    for c in self.spec["containers"]
                ]
                self._write_status(phase="Pending")
                self.stopped.wait(delay)
                delay = min(delay * 2, 10.0)
        else:
            return
        policy = self.spec.get("restartPolicy", "Always")
        for init in self.inits:
            self._write_status(phase="Pending")
            backoff = 10.0
            while True:
                code = self._exec(init)
                init.terminated = init.last_terminated
                if self.stopped.is_set():
                    return
                if code == 0:
                    break
                if policy == "Never":
                    self._write_status(phase="Failed")
                    return
                # The kubelet restarts a failed init container with the same backoff.
                init.restarts += 1
                self._write_status(phase="Pending")
                if self.stopped.wait(backoff):
                    return
                backoff = min(backoff * 2, 300.0)
        threads = [
            threading.Thread(target=self._keep_running, args=(c, policy), daemon=True)
            for c in self.containers
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.stopped.is_set():
            return
        ok = all(c.terminated and c.terminated["exitCode"] == 0 for c in self.containers)
        self._write_status(phase="Succeeded" if ok else "Failed")

    def _keep_running(self, c: Ctr, policy: str) -> None:
        """Run one container; restart it as the restartPolicy says, with the kubelet's backoff."""
        backoff = 10.0
        while True:
            c.terminated = c.waiting = None
            code = self._exec(c)
            if self.stopped.is_set():
                return
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                c.terminated = c.last_terminated
                if any(x.proc is not None and x.proc.poll() is None for x in self.containers):
                    self._write_status(phase="Running")  # the others still run
                return
            c.restarts += 1
            c.waiting = ("CrashLoopBackOff", f"back-off {backoff:.0f}s restarting failed container")
            self._write_status(phase="Running")
            if self.stopped.wait(backoff):
                return
            backoff = min(backoff * 2, 300.0)

    def _exec(self, c: Ctr) -> int:
        """Start the container's process, wait for it; `c.last_terminated` says how it ended."""
        cwd = Path(self.fs.map_path(c.spec.get("workingDir") or "/"))
        cwd.mkdir(parents=True, exist_ok=True)
        term = Path(c.env["SELFMOA_TERMINATION_LOG"])
        term.parent.mkdir(parents=True, exist_ok=True)
        term.write_text("")
        logfile = self.fs.root / f"{c.name}.log"
        started = c.started = now()
        exe = shutil.which(c.cmd[0], path=c.env["PATH"])
        if exe is None:
            # Like a runtime's "executable file not found": the container fails to start.
            c.last_terminated = {
                "exitCode": 128,
                "reason": "StartError",
                "message": f'exec: "{c.cmd[0]}": executable file not found in $PATH',
                "startedAt": started,
                "finishedAt": now(),
            }
            return 128
        with open(logfile, "ab") as out:
            log.info("%s/%s: start %s: %s", self.ns, self.name, c.name, " ".join(c.cmd)[:300])
            c.proc = subprocess.Popen(
                [exe, *c.cmd[1:]],
                cwd=cwd,
                env=c.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        is_main = c in self.containers
        if is_main:
            probe = c.spec.get("readinessProbe")
            c.ready = not probe  # without a probe a started container is ready
            self._write_status(phase="Running")
            if probe:
                threading.Thread(target=self._probe_loop, args=(c, probe), daemon=True).start()
        code = c.proc.wait()
        c.ready = False
        message = term.read_text(errors="replace")[:MAX_MESSAGE] if term.exists() else ""
        policy = c.spec.get("terminationMessagePolicy")
        if not message.strip() and code != 0 and policy == "FallbackToLogsOnError":
            message = _log_tail(logfile)
        c.last_terminated = {
            "exitCode": code if code >= 0 else 128 - code,  # killed by signal N: 128+N
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": started,
            "finishedAt": now(),
            "containerID": f"selfmoa-player://{c.proc.pid}",
            **({"message": message} if message else {}),
        }
        log.info("%s/%s: %s exited %s", self.ns, self.name, c.name, code)
        return code

    def _probe_loop(self, c: Ctr, probe: dict[str, Any]) -> None:
        period = float(probe.get("periodSeconds", 10))
        proc = c.proc
        time.sleep(float(probe.get("initialDelaySeconds", 0)))
        while proc is not None and proc.poll() is None and not self.stopped.is_set():
            ok = self._probe_once(c, probe)
            if ok != c.ready and proc.poll() is None:
                c.ready = ok
                self._write_status(phase="Running")
            # Not ready yet: look again soon (a kubelet would wait periodSeconds; tests are short).
            time.sleep(period if ok else min(period, 2.0))

    def _probe_once(self, c: Ctr, probe: dict[str, Any]) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1)) + 1
        if "exec" in probe:
            cmd = [self._map(expand_vars(x, c.env)) for x in probe["exec"]["command"]]
            exe = shutil.which(cmd[0], path=c.env["PATH"])
            if exe is None:
                return False
            cwd = Path(self.fs.map_path(c.spec.get("workingDir") or "/"))
            try:
                done = subprocess.run(
                    [exe, *cmd[1:]], cwd=cwd, env=c.env, capture_output=True, timeout=timeout + 30
                )
            except subprocess.TimeoutExpired:
                return False
            return done.returncode == 0
        action = probe.get("httpGet") or probe.get("tcpSocket")
        if action is None:
            return True
        port = resolve_port(c.spec, action["port"])
        try:
            if "httpGet" in probe:
                conn = http.client.HTTPConnection(self.ip, port, timeout=timeout)
                conn.request("GET", action.get("path", "/"))
                status = conn.getresponse().status
                conn.close()
                return 200 <= status < 400
            with socket.create_connection((self.ip, port), timeout=timeout):
                return True
        except OSError:
            return False

    def stop(self, grace: float = 5.0) -> None:
        """The Pod was deleted: kill its process groups (TERM, then KILL after `grace`)."""
        self.stopped.set()
        live = [p for p in self.procs if p.poll() is None]
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        end = time.monotonic() + grace
        for p in live:
            try:
                p.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    # ------------------------------------------------------------------ status

    def _container_status(self, c: Ctr) -> dict[str, Any]:
        if c.waiting is not None:
            state: dict[str, Any] = {"waiting": {"reason": c.waiting[0], "message": c.waiting[1]}}
        elif c.terminated is not None:
            state = {"terminated": c.terminated}
        elif c.proc is not None:
            state = {"running": {"startedAt": c.started}}
        else:
            waiting_for_inits = self.inits and c in self.containers
            state = {
                "waiting": {
                    "reason": "PodInitializing" if waiting_for_inits else "ContainerCreating"
                }
            }
        out: dict[str, Any] = {
            "name": c.name,
            "image": c.spec.get("image", ""),
            "imageID": "",
            "ready": c.ready and "running" in state,
            "started": "running" in state,
            "restartCount": c.restarts,
            "state": state,
        }
        if c.last_terminated is not None and c.terminated is None and c.restarts:
            out["lastState"] = {"terminated": c.last_terminated}
        if c.proc is not None:
            out["containerID"] = f"selfmoa-player://{c.proc.pid}"
        return out

    def _write_status(self, *, phase: str, reason: str | None = None) -> None:
        """PUT pods/status, as the kubelet reports it (retried on conflicts; gone Pods ignored)."""
        if self.stopped.is_set():
            return
        with self._status_lock:
            self._put_status(phase, reason)

    def _put_status(self, phase: str, reason: str | None) -> None:
        statuses = [self._container_status(c) for c in self.containers]
        ready = phase == "Running" and bool(statuses) and all(s["ready"] for s in statuses)
        t = now()
        done = phase in ("Succeeded", "Failed")
        not_ready = "PodCompleted" if done else "ContainersNotReady"

        def cond(kind: str, ok: bool, why: str | None = None) -> dict[str, Any]:
            d: dict[str, Any] = {
                "type": kind,
                "status": "True" if ok else "False",
                "lastProbeTime": None,
                "lastTransitionTime": t,
            }
            if why and not ok:
                d["reason"] = why
            return d

        status: dict[str, Any] = {
            "phase": phase,
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "hostIP": "127.0.0.1",
            "startTime": self.started_at,
            "conditions": [
                cond("Initialized", phase != "Pending"),
                cond("Ready", ready, not_ready),
                cond("ContainersReady", ready, not_ready),
                cond("PodScheduled", True),
            ],
            "containerStatuses": statuses,
        }
        if self.inits:
            status["initContainerStatuses"] = [self._container_status(c) for c in self.inits]
        if reason:
            status["reason"] = reason
        from kubernetes.client.exceptions import ApiException

        for _ in range(10):
            pod = self.api.pod(self.ns, self.name)
            if pod is None or pod["metadata"]["uid"] != self.uid:
                return
            old = pod.get("status") or {}
            if "qosClass" in old:  # set by the apiserver at creation; immutable
                status["qosClass"] = old["qosClass"]
            # Keep transition times of conditions that didn't change (kubelet semantics).
            prev = {x["type"]: x for x in old.get("conditions") or []}
            for x in status["conditions"]:
                p = prev.get(x["type"])
                if p and p.get("status") == x["status"]:
                    x["lastTransitionTime"] = p.get("lastTransitionTime", t)
            pod["status"] = status
            try:
                self.api.replace_status(pod)
                return
            except ApiException as e:
                if e.status == 409:
                    continue
                if e.status == 404:
                    return
                raise


def resolve_port(c: Mapping[str, Any], port: int | str) -> int:
    """A container port given by number or by name (`ports[].name`) -> its number."""
    if isinstance(port, str) and not port.isdigit():
        named = [p for p in c.get("ports") or [] if p.get("name") == port]
        if not named:
            raise LookupError(f"container {c['name']} has no port named {port!r}")
        return int(named[0]["containerPort"])
    return int(port)


LOOPBACK = ("0.0.0.0", "127.0.0.1", "localhost")


def map_host(value: str, ip: str) -> str:
    """The Pod's own addresses in a value (`0.0.0.0`, `127.0.0.1`, `localhost`, alone or as a
    URL's host, also after `--flag=`) -> the Pod's IP: a Pod has its own network namespace."""
    m = re.match(r"^(--?[\w.-]+=)(.*)$", value)
    if m:
        return m.group(1) + map_host(m.group(2), ip)
    if value in LOOPBACK:
        return ip
    return re.sub(r"^(\w+://)(0\.0\.0\.0|127\.0\.0\.1|localhost)(?=[:/]|$)", rf"\g<1>{ip}", value)


def _log_tail(path: Path) -> str:
    """The kubelet's FallbackToLogsOnError message: last 80 lines, at most 2048 bytes."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    lines = data.splitlines()[-FALLBACK_LINES:]
    return b"\n".join(lines)[-FALLBACK_BYTES:].decode(errors="replace")


class KubeletPlayer:
    """Watches Pods (all namespaces, optionally a label selector) and plays each one once."""

    def __init__(
        self,
        api_client: Any,
        root: Path,
        *,
        venv_bin: Path,
        label_selector: str = "",
        worker_image: str | None = None,
        image_env: Mapping[str, str] | None = None,
    ) -> None:
        self.api = Api(api_client)
        self._client = api_client
        self.root = root
        self.venv_bin = venv_bin
        self.label_selector = label_selector
        self.worker_image = worker_image
        self.image_env = dict(image_env or {})
        self.runners: dict[str, PodRunner] = {}
        self._ips = itertools.count()
        self.finished: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.proxy = ServiceProxy(self)
        self.network_env: dict[str, str] = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> KubeletPlayer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proxy.start()
        url = f"http://127.0.0.1:{self.proxy.port}"
        self.network_env = {"HTTP_PROXY": url, "http_proxy": url}  # NO_PROXY: per Pod
        self._watcher = threading.Thread(target=self._watch_loop, name="kubelet-watch", daemon=True)
        self._watcher.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            runners = list(self.runners.values())
        for r in runners:
            r.stop(grace=2.0)
        self.proxy.stop()

    def __enter__(self) -> KubeletPlayer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ watch

    def _watch_loop(self) -> None:
        from kubernetes import client, watch
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self._client)
        while not self._stop.is_set():
            try:
                resp: Any = core.list_pod_for_all_namespaces(
                    label_selector=self.label_selector, _preload_content=False
                )
                listing = json.loads(resp.data)
                seen = set()
                for pod in listing.get("items") or []:
                    seen.add(pod["metadata"]["uid"])
                    self._handle("ADDED", pod)
                with self._lock:
                    gone = [u for u in self.runners if u not in seen]
                for uid in gone:
                    self._forget(uid)
                rv = listing["metadata"]["resourceVersion"]
                w: Any = watch.Watch()  # type: ignore[no-untyped-call]
                for ev in w.stream(
                    core.list_pod_for_all_namespaces,
                    label_selector=self.label_selector,
                    resource_version=rv,
                    timeout_seconds=30,
                    allow_watch_bookmarks=False,
                ):
                    if self._stop.is_set():
                        w.stop()
                        break
                    if ev["type"] == "ERROR":
                        break  # 410 Gone and friends: relist
                    self._handle(ev["type"], ev["raw_object"])
            except ApiException as e:
                if self._stop.is_set():
                    return
                log.warning("pod watch: HTTP %s; relisting", e.status)
                time.sleep(1)
            except Exception:  # connection reset when the control plane stops, etc.
                if self._stop.is_set():
                    return
                log.exception("pod watch failed; relisting")
                time.sleep(1)

    def _handle(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        if kind == "DELETED" or meta.get("deletionTimestamp"):
            self._forget(uid)
            return
        if pod["spec"].get("nodeName"):
            return  # bound to a real node: not ours
        phase = (pod.get("status") or {}).get("phase", "Pending")
        with self._lock:
            if uid in self.runners or uid in self.finished or phase != "Pending":
                return
            runner = PodRunner(self, pod, self._next_ip())
            self.runners[uid] = runner
        runner.thread.start()

    def _forget(self, uid: str) -> None:
        with self._lock:
            runner = self.runners.pop(uid, None)
            self.finished.add(uid)
        if runner is not None:
            log.info("%s/%s: deleted; stopping its process", runner.ns, runner.name)
            threading.Thread(target=runner.stop, daemon=True).start()

    # ------------------------------------------------------------------ services

    def _next_ip(self) -> str:
        """A loopback address of its own for each Pod (127.1.0.1, 127.1.0.2, ...)."""
        n = next(self._ips)  # atomic; called with self._lock held
        return f"127.{1 + n // 65025}.{n // 255 % 255}.{n % 255 + 1}"

    def endpoint(self, ns: str, service: str, port: int) -> tuple[str, int]:
        """(host, port) serving `service:port` now, the way kube-proxy would pick one."""
        svc = self.api.service(ns, service)
        if svc is None:
            raise LookupError(f"no Service {ns}/{service}")
        sports = [p for p in svc["spec"].get("ports") or [] if int(p["port"]) == port]
        if not sports:
            raise LookupError(f"Service {ns}/{service} has no port {port}")
        target = sports[0].get("targetPort", port)
        selector = svc["spec"].get("selector") or {}
        if not selector:
            raise LookupError(f"Service {ns}/{service} has no selector")
        # Ready Pods the selector picks, in random order (kube-proxy's iptables mode is random).
        pods = self.api.pods(ns, selector)
        random.shuffle(pods)
        for pod in pods:
            status = pod.get("status") or {}
            conds = {c["type"]: c["status"] for c in status.get("conditions") or []}
            if status.get("phase") != "Running" or conds.get("Ready") != "True":
                continue
            for c in pod["spec"]["containers"]:
                try:
                    return status["podIP"], resolve_port(c, target)
                except LookupError:
                    continue
        raise LookupError(f"Service {ns}/{service}:{port} has no ready endpoint")

    # ------------------------------------------------------------------ helpers for tests

    def pod_dirs(self, namespace: str) -> Iterator[Path]:
        yield from sorted((self.root / namespace).glob("*"))

    def wait_idle(self, timeout: float, predicate: Callable[[], bool]) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.5)
        return False


SVC_HOST = re.compile(r"^([a-z0-9-]+)\.([a-z0-9-]+)(?:\.svc(?:\.cluster\.local)?)?\.?$")


class ServiceProxy:
    """An HTTP forward proxy standing for cluster DNS + kube-proxy (see the module docstring)."""

    def __init__(self, player: KubeletPlayer) -> None:
        self.player = player
        self.server: ThreadingHTTPServer | None = None
        self.port = 0

    def start(self) -> None:
        player = self.player

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("proxy: " + fmt, *args)

            def _fail(self, code: int, msg: str) -> None:
                body = msg.encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self) -> None:
                url = urlsplit(self.path)
                host = (url.hostname or "").lower()
                m = SVC_HOST.match(host)
                if url.scheme == "http" and host.startswith("127.") and host != "127.0.0.1":
                    target = (host, url.port or 80)  # a Pod IP: routed directly
                elif url.scheme != "http" or m is None:
                    self._fail(502, f"no route to {host} from the test cluster (Services only)")
                    return
                else:
                    try:
                        target = player.endpoint(m.group(2), m.group(1), url.port or 80)
                    except LookupError as e:
                        self._fail(503, str(e))
                        return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("proxy-connection", "connection", "keep-alive")
                }
                path = url.path + (f"?{url.query}" if url.query else "")
                try:
                    conn = http.client.HTTPConnection(*target, timeout=600)
                    conn.request(self.command, path or "/", body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except OSError as e:
                    self._fail(502, f"{host}: {e}")
                    return
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="svc-proxy", daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
