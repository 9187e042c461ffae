"""The kubelet player's own rules, without a cluster (these run in the ordinary `make test`)."""

from __future__ import annotations

from pathlib import Path

from kubelet import (
    SVC_HOST,
    PodFS,
    PodRunner,
    _log_tail,
    expand_vars,
    map_host,
    parse_dockerfile_env,
)

ROOT = Path(__file__).resolve().parents[2]


def test_paths_under_a_mount_map_to_the_volume_others_to_the_private_root(tmp_path: Path) -> None:
    fs = PodFS(
        tmp_path / "pod",
        mounts=[("/work", tmp_path / "vol-work"), ("/work/cache", tmp_path / "vol-cache")],
    )
    assert fs.map_path("/work") == str(tmp_path / "vol-work")
    assert fs.map_path("/work/x/y") == str(tmp_path / "vol-work" / "x" / "y")
    assert fs.map_path("/work/cache/m") == str(tmp_path / "vol-cache" / "m")  # longest mount wins
    assert fs.map_path("/workers") == str(tmp_path / "pod" / "rootfs" / "workers")
    assert fs.map_path("/home/selfmoa") == str(tmp_path / "pod" / "rootfs" / "home" / "selfmoa")
    assert fs.map_value("--out=/work/o") == f"--out={tmp_path / 'vol-work' / 'o'}"
    assert fs.map_value("file:///work/runs") == f"file://{tmp_path / 'vol-work' / 'runs'}"
    for untouched in ("s3://bkt/runs", "selfmoa", "0", '{"a": "/work"}', "relative/path"):
        assert fs.map_value(untouched) == untouched


def test_dollar_paren_expansion_follows_kubernetes() -> None:
    env = {"A": "1", "B": "two"}
    assert expand_vars("$(A)-$(B)", env) == "1-two"
    assert expand_vars("$(MISSING)", env) == "$(MISSING)"
    assert expand_vars("$$(A)", env) == "$(A)"


def test_log_tail_is_the_kubelets_fallback(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_text("".join(f"line {i}\n" for i in range(200)))
    tail = _log_tail(log)
    assert tail.splitlines()[-1] == "line 199"
    assert len(tail.splitlines()) <= 80 and len(tail.encode()) <= 2048


def test_worker_image_env_is_read_from_its_dockerfile() -> None:
    env = parse_dockerfile_env(ROOT / "images" / "worker" / "Dockerfile")
    assert env["HOME"] == "/home/selfmoa"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_service_hosts_are_recognised() -> None:
    for host in ("svc.ns.svc", "svc.ns.svc.cluster.local", "svc.ns"):
        m = SVC_HOST.match(host)
        assert m and m.groups() == ("svc", "ns"), host
    assert SVC_HOST.match("example.com.evil.org") is None


def test_a_pods_own_addresses_map_to_its_ip() -> None:
    ip = "127.1.0.7"
    assert map_host("0.0.0.0", ip) == ip
    assert map_host("http://127.0.0.1:8000", ip) == f"http://{ip}:8000"
    assert map_host("--server=http://localhost:8000/v1", ip) == f"--server=http://{ip}:8000/v1"
    for untouched in (
        "http://127.0.0.10:1",
        "s3://bkt/x",
        "127.0.0.1.example",
        '{"e": "http://127.0.0.1"}',
    ):
        assert map_host(untouched, ip) == untouched


def test_the_vllm_command_becomes_selfmoa_serve_on_the_pods_ip(tmp_path: Path) -> None:
    from selfmoa.api.spec import AlignmentRunSpec, PolicySpec, ServingEngine, ServingSpec
    from selfmoa.controller.builders import serving_objects
    from selfmoa.controller.config import OperatorConfig

    spec = AlignmentRunSpec(
        policy=PolicySpec(model="selfmoa/tiny"), serving=ServingSpec(engine=ServingEngine.vllm)
    )
    dep, _ = serving_objects(
        run="r",
        namespace="ns",
        spec=spec,
        model="selfmoa/tiny",
        replicas=1,
        config=OperatorConfig(),
    )
    container = dep["spec"]["template"]["spec"]["containers"][0]
    # A runner without a player or API: _command needs only the Pod's filesystem and address.
    runner = PodRunner.__new__(PodRunner)
    runner.fs = PodFS(tmp_path / "pod")
    runner.ip = "127.1.0.9"
    runner.ns, runner.name = "ns", "p"
    cmd = runner._command(container, {})
    assert cmd[:2] == ["selfmoa", "serve"]
    assert cmd[cmd.index("--model") + 1] == "selfmoa/tiny"
    assert cmd[cmd.index("--served-model-name") + 1] == "selfmoa/tiny"
    assert cmd[cmd.index("--host") + 1] == "127.1.0.9"
    assert cmd[cmd.index("--port") + 1] == str(container["ports"][0]["containerPort"])
    assert "--enable-lora" not in cmd and "--max-loras" not in cmd
