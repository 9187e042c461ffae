"""Why a reconcile could not do its work, in words a user can act on.

A reconcile that raises (the API server refused a child, the store is unreachable or misnamed)
must not leave the run with an empty status while the operator retries in its log. `classify`
turns the exception into a condition reason and a one-line message, and says whether retrying
can help: a *transient* cause (the API or the store not answering, a missing permission that an
admin may grant) keeps the run waiting with backoff, saying so; a *permanent* one (a child the
API server rejects as invalid, a store URI that can't name a bucket) fails the run.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from selfmoa.api import SpecError
from selfmoa.controller.kube import KubeError
from selfmoa.store import StoreError, StoreUnavailable

#: HTTP statuses of a child create/patch that no retry will change: the object itself is wrong.
REJECTED = {400, 422}


@dataclass(frozen=True)
class Blocked:
    reason: str
    message: str
    permanent: bool


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:500]


class StorageConfigError(StoreError):
    """The run's storage can't be opened at all (a malformed URI, an unknown scheme)."""


def classify(e: BaseException) -> Blocked:
    if isinstance(e, SpecError):
        return Blocked("InvalidSpec", _one_line(e), permanent=True)
    if isinstance(e, StorageConfigError):
        return Blocked("InvalidStorage", f"storage: {_one_line(e)}", permanent=True)
    if isinstance(e, StoreUnavailable):
        return Blocked("StorageUnavailable", f"storage: {_one_line(e)}", permanent=False)
    if isinstance(e, StoreError):
        # Not an outage (a missing bucket, refused credentials), but one an admin can fix
        # without touching the run: it keeps waiting, saying what is wrong.
        return Blocked("StorageRefused", f"storage: {_one_line(e)}", permanent=False)
    if isinstance(e, KubeError):
        if e.status in REJECTED:
            return Blocked(
                "ChildRejected",
                f"the API server rejected a child object: {_one_line(e)}",
                permanent=True,
            )
        if e.status == 403:
            return Blocked(
                "Forbidden",
                f"the operator lacks a permission: {_one_line(e)} (check the chart's RBAC)",
                permanent=False,
            )
        return Blocked("ApiError", f"Kubernetes API: {_one_line(e)}", permanent=False)
    if isinstance(e, (OSError, asyncio.TimeoutError)):
        return Blocked("ApiUnavailable", f"{type(e).__name__}: {_one_line(e)}", permanent=False)
    return Blocked("ReconcileError", f"{type(e).__name__}: {_one_line(e)}", permanent=False)
