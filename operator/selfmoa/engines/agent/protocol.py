"""The documents the client and the agents exchange through the run's store (see the package).

Both sides parse what the other wrote defensively: a malformed document is reported as one line
(`ProtocolError`) and never crashes an agent that already serves adapters.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from selfmoa.run import layout, verified
from selfmoa.store import Store

#: Adapters kept in the desired set: the current, the parent and the best (vLLM's `--max-loras`
#: is one more, so a new adapter loads before an old one is unloaded).
KEEP: Final = 3
#: An agent rewrites its report at least this often, changed or not.
HEARTBEAT_S: Final = 10.0
#: A report not rewritten for this long is a replica that is gone (pods' clocks may differ by a
#: few seconds; this leaves room for them and for a slow store).
STALE_AFTER_S: Final = 60.0
#: What every served adapter's name starts with.
NAME_PREFIX: Final = "selfmoa-"
#: In the agent's directory once its server holds every desired adapter (the readiness probe).
SYNCED: Final = ".selfmoa-synced"

_REPLICA_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


class ProtocolError(ValueError):
    """A document in the store that doesn't have the expected shape."""


def model_slug(model: str) -> str:
    """A short, key-safe name for a model id (with a hash: `a/b` and `a-b` stay distinct)."""
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:24].strip("-") or "model"
    return f"{slug}-{hashlib.sha256(model.encode()).hexdigest()[:6]}"


def serving_prefix(model: str) -> str:
    return f"{layout.SERVING}/{model_slug(model)}"


def desired_key(model: str) -> str:
    return f"{serving_prefix(model)}/{layout.DESIRED_ADAPTERS}"


def replicas_prefix(model: str) -> str:
    return f"{serving_prefix(model)}/{layout.REPLICAS}/"


def report_key(model: str, replica: str) -> str:
    return f"{replicas_prefix(model)}{check_replica_id(replica)}.json"


def check_replica_id(replica: str) -> str:
    """`replica` when it can name a report (a pod name does); `ProtocolError` otherwise."""
    if not _REPLICA_ID.match(replica):
        raise ProtocolError(
            f"replica id {replica[:80]!r}: use letters, digits, '.', '_' and '-' (a pod name)"
        )
    return replica


# ---------------------------------------------------------------- adapters and their manifests


def manifest_key_of(key: str) -> tuple[str, str]:
    """(the stage's manifest key, the adapter's folder inside the stage) for an adapter key such
    as `iter-003/train/adapter` (`selfmoa.run.verified`'s rule, as a ProtocolError)."""
    try:
        return verified.manifest_key_of(key)
    except ValueError as e:
        raise ProtocolError(str(e)) from None


listed_files = verified.listed_files


def files_digest(files: Mapping[str, Mapping[str, Any]]) -> str:
    """One hash over the adapter's file names and sha256s (changes when any file does)."""
    canonical = json.dumps({k: str(v["sha256"]) for k, v in files.items()}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def served_name(store_uri: str, key: str, digest: str) -> str:
    """The model name an adapter is served under: one per stored adapter and content."""
    ident = f"{store_uri.rstrip('/')}/{key}@{digest}"
    return NAME_PREFIX + hashlib.sha256(ident.encode()).hexdigest()[:10]


# ---------------------------------------------------------------- the desired set


@dataclass(frozen=True)
class Wanted:
    """One adapter of the desired set."""

    name: str
    key: str
    digest: str
    #: When a client last asked for it (the client's clock).
    requested: float = 0.0


@dataclass
class DesiredSet:
    model: str
    #: Most recently asked for first.
    adapters: list[Wanted] = field(default_factory=list)
    updated: float = 0.0

    def names(self) -> list[str]:
        return [w.name for w in self.adapters]

    def ask(self, wanted: Wanted, keep: int = KEEP) -> None:
        """Put `wanted` first and keep the `keep` most recently asked for."""
        rest = [w for w in self.adapters if w.name != wanted.name]
        self.adapters = [wanted, *rest][:keep]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "updated": self.updated,
            "adapters": [asdict(w) for w in self.adapters],
        }

    @classmethod
    def from_json(cls, obj: Any, model: str) -> DesiredSet:
        if not isinstance(obj, dict) or not isinstance(obj.get("adapters"), list):
            raise ProtocolError("desired set: expected an object with an 'adapters' list")
        out = []
        for a in obj["adapters"]:
            try:
                out.append(
                    Wanted(
                        name=_str(a, "name"),
                        key=_str(a, "key"),
                        digest=_str(a, "digest"),
                        requested=float(a.get("requested") or 0.0),
                    )
                )
            except (TypeError, ValueError, AttributeError) as e:
                raise ProtocolError(
                    f"desired set: bad adapter entry {str(a)[:120]} ({e})"
                ) from None
        return cls(model=model, adapters=out, updated=float(obj.get("updated") or 0.0))


def _str(obj: Any, name: str) -> str:
    value = obj[name] if isinstance(obj, dict) else None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    return value


def read_desired(store: Store, model: str) -> DesiredSet:
    """The desired set (empty when nobody has asked for an adapter yet)."""
    try:
        obj = store.read_json(desired_key(model))
    except FileNotFoundError:
        return DesiredSet(model=model)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProtocolError(f"{store.uri}/{desired_key(model)}: not JSON ({e})") from None
    return DesiredSet.from_json(obj, model)


def write_desired(store: Store, desired: DesiredSet) -> None:
    store.write_json(desired_key(desired.model), desired.to_json())


# ---------------------------------------------------------------- replica reports


@dataclass
class Report:
    """What one replica's agent knows about its server."""

    replica: str
    model: str
    server: str
    updated: float = 0.0
    #: Whether the server answered the agent's last `/v1/models`.
    server_up: bool = False
    #: Every desired adapter is loaded (or refused): the replica may take traffic.
    synced: bool = False
    #: name -> {key, digest, path, at}
    loaded: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: name -> {key, digest, reason, permanent, at}
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> Report:
        if not isinstance(obj, dict):
            raise ProtocolError("replica report: expected an object")
        try:
            return cls(
                replica=_str(obj, "replica"),
                model=_str(obj, "model"),
                server=str(obj.get("server") or ""),
                updated=float(obj.get("updated") or 0.0),
                server_up=bool(obj.get("server_up")),
                synced=bool(obj.get("synced")),
                loaded={str(k): dict(v) for k, v in (obj.get("loaded") or {}).items()},
                failed={str(k): dict(v) for k, v in (obj.get("failed") or {}).items()},
            )
        except (TypeError, ValueError, AttributeError) as e:
            raise ProtocolError(f"replica report: {e}") from None

    def comparable(self) -> dict[str, Any]:
        """The report without its times (to tell whether anything changed)."""
        return {
            "server_up": self.server_up,
            "synced": self.synced,
            "loaded": {
                n: {k: v for k, v in e.items() if k != "at"} for n, e in self.loaded.items()
            },
            "failed": {
                n: {k: v for k, v in e.items() if k != "at"} for n, e in self.failed.items()
            },
        }


def write_report(store: Store, report: Report) -> None:
    store.write_json(report_key(report.model, report.replica), report.to_json())


def read_reports(store: Store, model: str) -> tuple[list[Report], list[str]]:
    """Every replica's report, and one line per report that couldn't be read."""
    reports, problems = [], []
    for key in store.list(replicas_prefix(model)):
        if not key.endswith(".json"):
            continue
        try:
            reports.append(Report.from_json(store.read_json(key)))
        except FileNotFoundError:
            continue  # deleted by a stopping agent between the listing and the read
        except (json.JSONDecodeError, UnicodeDecodeError, ProtocolError) as e:
            problems.append(f"{key}: {e}")
    return reports, problems
