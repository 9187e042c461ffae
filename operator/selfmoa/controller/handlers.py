"""Kopf handler registration, and nothing else: every handler delegates at once.

- create / update / resume of an AlignmentRun: validate (an invalid spec is a PermanentError:
  Kopf records it and never retries) and kick the run's loop;
- a daemon per run drives `reconcile.drive` (restarted by Kopf on operator restart: resume);
- Job and Deployment watches kick the owning run, so progress after a Job completes is prompt;
  the Job watch also keeps the operator's copy of the Jobs (`JobIndex`) that reconciles read;
- delete: explicit cleanup of the children (owner references would also collect them).
Finalizer, progress and diff-base annotations all live under `selfmoa.dev`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from selfmoa.api import SpecError
from selfmoa.api.spec import GROUP, KIND, PLURAL, VERSION
from selfmoa.controller import builders, reconcile
from selfmoa.controller.executor import KubernetesExecutor
from selfmoa.controller.kube import REQUEST_TIMEOUT_S
from selfmoa.controller.plan import PLACEHOLDER_SPEC
from selfmoa.controller.runtime import Runtime

LoginFn = Callable[..., "kopf.ConnectionInfo | Awaitable[kopf.ConnectionInfo | None] | None"]


def configure_settings(settings: kopf.OperatorSettings, *, scanning: bool = True) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.reporting_component = "selfmoa-operator"
    settings.posting.event_name_prefix = "selfmoa-"
    settings.scanning.disabled = not scanning
    # Every wait on the API server has a bound: Kopf's own requests as long as the executor's
    # (controller.kube), and a watch that goes quiet is reopened (Kopf's inactivity timeout).
    settings.networking.connect_timeout = 10
    settings.networking.request_timeout = REQUEST_TIMEOUT_S


def default_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, then the kubeconfig."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def owner_run(obj: Mapping[str, Any]) -> str | None:
    meta = obj.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/"):
            return str(ref["name"])
    label = (meta.get("labels") or {}).get(builders.LABEL_RUN)
    return str(label) if label else None


def _emitter(body: kopf.Body) -> reconcile.EventFn:
    def emit(etype: str, reason: str, message: str) -> None:
        kopf.event(body, type=etype, reason=reason, message=message[:1000])

    return emit


def register(
    registry: kopf.OperatorRegistry,
    rt: Runtime,
    *,
    login: LoginFn = default_login,
    scanning: bool = True,
    tune: Callable[[kopf.OperatorSettings], None] | None = None,
) -> None:
    """Register every handler of the operator into `registry` (one per operator instance)."""

    @kopf.on.startup(registry=registry)
    def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_settings(settings, scanning=scanning)
        if tune is not None:
            tune(settings)

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**_: Any) -> None:
        await rt.kube.close()

    @kopf.on.login(registry=registry)
    async def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info = login(**kwargs)
        if inspect.isawaitable(info):
            info = await info
        rt.connection = info
        await rt.kube.close()  # reconnect with the fresh credentials
        return info  # type: ignore[return-value]

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    async def _changed(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
        rt.kick(namespace or "default", name)
        try:
            reconcile.validate(body, rt)
        except SpecError as e:
            # The daemon writes the Failed status; Kopf must not retry this handler.
            raise kopf.PermanentError(str(e)) from None

    @kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, cancellation_timeout=5.0)
    async def _drive(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
        await reconcile.drive(body, rt, _emitter(body), lambda: bool(stopped), stopped.wait)

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    async def _deleted(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
        await delete_children(body, rt)
        rt.forget(namespace or "default", name)

    async def _child_event(
        body: kopf.Body, type: str | None, resource: kopf.Resource, **_: Any
    ) -> None:
        child_event(body, type, is_job=resource.plural == "jobs", rt=rt)

    for group, version, plural in (("batch", "v1", "jobs"), ("apps", "v1", "deployments")):
        labels = {builders.LABEL_RUN: kopf.PRESENT}
        kopf.on.event(group, version, plural, labels=labels, registry=registry)(_child_event)


def child_event(body: Mapping[str, Any], kind: str | None, *, is_job: bool, rt: Runtime) -> None:
    """A run's Job or Deployment changed: keep the Job in the operator's copy, and kick the run
    unless the change is one its plan doesn't read (`JobIndex.event`)."""
    if is_job and not rt.jobs.event(kind, body):
        return
    kick_owner(body, str((body.get("metadata") or {}).get("namespace") or "default"), rt)


def kick_owner(obj: Mapping[str, Any], namespace: str, rt: Runtime) -> None:
    run = owner_run(obj)
    if run is not None and (namespace, run) in rt.triggers:
        rt.kick(namespace, run)


async def delete_children(body: Mapping[str, Any], rt: Runtime) -> int:
    """Remove the run's Jobs, Deployments and Services (the artifacts in the store stay)."""
    meta = body["metadata"]
    # Cleanup must work even for a run whose spec never validated.
    ex = KubernetesExecutor(
        rt,
        name=str(meta["name"]),
        namespace=str(meta.get("namespace") or "default"),
        spec=PLACEHOLDER_SPEC,
        owner=None,
    )
    return await ex.cleanup()
