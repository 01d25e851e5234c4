"""Cache entries: the manifest document, its (de)serialization and signature.

A manifest is small JSON: the key and its components, the artifacts the step
produced (name -> Metaflow content hash and datastore info), the recorded
transition, times, origin and versions. Blobs live apart, content-addressed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..exceptions import CorruptEntry
from ..key.components import canonical_json

MANIFEST_FORMAT = 1


@dataclass
class ArtifactRecord:
    sha: str  # Metaflow's content hash (sha1 of the pickled bytes): also the blob name
    info: dict[str, Any]  # Metaflow's per-artifact info (size, type, encoding, ...)
    cas_raw: bool = False  # whether the stored blob is raw (not gzip-packed)
    stored_size: int | None = None  # bytes of the stored (packed) blob
    # xxh3-128 of the stored bytes when known: checking it is ~50x faster than
    # unpacking and sha1-ing the payload (the fallback when it is absent)
    stored_xxh: str | None = None

    @classmethod
    def from_dict(cls, d):
        return cls(
            sha=d["sha"],
            info=d.get("info") or {},
            cas_raw=bool(d.get("cas_raw", False)),
            stored_size=d.get("stored_size"),
            stored_xxh=d.get("stored_xxh"),
        )


@dataclass
class Manifest:
    key: str
    flow: str
    step: str
    components: dict[str, Any]
    artifacts: dict[str, ArtifactRecord]
    transition: dict[str, Any]
    created: float
    expires: float | None
    origin: str  # pathspec of the task that produced the entry
    body_seconds: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)
    # inherited artifacts outside the key that the step might have set: a hit
    # is only valid while the current inputs still carry these hashes
    passthrough: dict[str, str] = field(default_factory=dict)
    # what Metaflow itself sets in the task's output (e.g. `name`): never
    # restored, recorded so that `memoize plan` can follow a join's outputs
    unrestored: dict[str, str] = field(default_factory=dict)
    # what the body used while it ran ({dependency id: fingerprint}, deps.py):
    # verified before every hit
    observed: dict[str, str] = field(default_factory=dict)
    # the key the step's static identity gives; differs from ``key`` when this
    # entry is a variant (same static key, other observed dependency values)
    static_key: str | None = None
    # join artifacts merged through unchanged from every input: a hit takes
    # them from the current inputs, never from the entry
    merged: list[str] = field(default_factory=list)
    # for people, never part of the key: the foreach items and parameter values
    # of the task that stored the entry (``context_of`` below). None in entries
    # written before it existed, and then left out of the document, so that
    # their signatures still verify.
    context: dict[str, Any] | None = None
    format: int = MANIFEST_FORMAT
    signature: str | None = None

    def is_expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    @property
    def ttl(self) -> float | None:
        """How long the entry is valid: a duration, the same on every clock."""
        return None if self.expires is None else self.expires - self.created

    def expired_at_age(self, age: float) -> bool:
        """Whether an entry written ``age`` seconds ago (on the store's clock) has expired;
        a negative age (a timestamp in the future) counts as just written."""
        return self.ttl is not None and max(0.0, age) >= self.ttl

    @property
    def blob_shas(self):
        return sorted({a.sha for a in self.artifacts.values()})

    @property
    def artifact_bytes(self) -> int:
        return sum((a.stored_size or 0) for a in self.artifacts.values())

    def to_dict(self, include_signature=True) -> dict[str, Any]:
        d = asdict(self)
        if d["context"] is None:
            del d["context"]
        if not include_signature:
            d.pop("signature", None)
        return d

    def signing_payload(self) -> bytes:
        return canonical_json(self.to_dict(include_signature=False)).encode("utf-8")

    def sign(self, secret: str | None) -> Manifest:
        self.signature = _hmac(secret, self.signing_payload()) if secret else None
        return self

    def signature_valid(self, secret: str) -> bool:
        if not self.signature:
            return False
        return hmac.compare_digest(self.signature, _hmac(secret, self.signing_payload()))

    def dumps(self) -> bytes:
        return canonical_json(self.to_dict()).encode("utf-8")

    @classmethod
    def loads(cls, data: bytes, expected_key: str | None = None) -> Manifest:
        try:
            d = json.loads(data.decode("utf-8"))
            if d.get("format") != MANIFEST_FORMAT:
                raise ValueError("unsupported manifest format %r" % d.get("format"))
            m = cls(
                key=d["key"],
                flow=d["flow"],
                step=d["step"],
                components=d["components"],
                artifacts={name: ArtifactRecord.from_dict(a) for name, a in d["artifacts"].items()},
                transition=d["transition"],
                created=float(d["created"]),
                expires=None if d.get("expires") is None else float(d["expires"]),
                origin=d.get("origin", ""),
                body_seconds=float(d.get("body_seconds") or 0.0),
                versions=d.get("versions") or {},
                passthrough=d.get("passthrough") or {},
                unrestored=d.get("unrestored") or {},
                observed=_string_map(d.get("observed")),
                static_key=d.get("static_key"),
                merged=_string_list(d.get("merged")),
                context=d.get("context"),
                format=d["format"],
                signature=d.get("signature"),
            )
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
            raise CorruptEntry("manifest does not parse: %s" % err, key=expected_key)
        problem = _problem(d)
        if problem:
            raise CorruptEntry("manifest does not validate: %s" % problem, key=expected_key)
        if expected_key is not None and m.key != expected_key:
            raise CorruptEntry(
                "manifest is for key %s, not %s" % (m.key, expected_key), key=expected_key
            )
        return m


# -- what an entry belongs to (for people) ---------------------------------------
#: a value is shown by its whole repr when that has at most this many characters
SHORT_REPR = 40
#: a value whose pickle is larger than this is shown by its digest alone: its
#: repr could be slow to compute, and would be cut short anyway
REPR_MAX_PICKLED = 4096


def shown_value(value: Any, pickled_size: int | None, digest: str) -> dict[str, str]:
    """How an entry's context records one value: ``{"value": repr}`` when the repr
    is short; ``{"value": its first characters + "...", "digest": ...}`` when the
    value is small but its repr is not; else ``{"digest": ...}``."""
    if pickled_size is None or pickled_size > REPR_MAX_PICKLED:
        return {"digest": digest}
    try:
        text = " ".join(repr(value).split())  # one line: a DataFrame's repr has several
    except Exception:  # a user's __repr__ may fail: the digest still identifies it
        return {"digest": digest}
    if len(text) <= SHORT_REPR:
        return {"value": text}
    return {"value": text[: SHORT_REPR - 3] + "...", "digest": digest}


@dataclass(frozen=True)
class ShownValue:
    """A foreach item or parameter value as list/show display it."""

    name: str  # the foreach variable or the parameter
    value: str | None  # a short repr
    digest: str | None  # when the repr is too long (or not recorded)
    # a foreach item: the first step inside its foreach, as Metaflow's foreach
    # stack names the frame (None for a parameter)
    step: str | None = None

    @property
    def text(self) -> str:
        """The short repr, else ``#`` and the digest's first 12 characters."""
        if self.value is not None:
            return self.value
        return "#%s" % self.digest[:12] if self.digest else "?"

    @property
    def detail(self) -> str:
        """The short repr and, when it was cut short, the digest too."""
        if self.value is not None and self.digest:
            return "%s (#%s)" % (self.value, self.digest[:12])
        return self.text


def foreach_text(shown: list[dict[str, Any]]) -> str:
    """``var=item`` per foreach frame (outermost first) that has a shown value
    (identity.foreach_component's ``shown``): a task's ``memoize_foreach``."""
    parts = []
    for frame in shown:
        value, digest = frame.get("value"), frame.get("digest")
        if value is None and digest is None:
            continue  # an outer frame behind an inner join: no item of its own
        parts.append("%s=%s" % (frame.get("var"), ShownValue("", value, digest).text))
    return ", ".join(parts)


def context_of(m: Manifest) -> tuple[list[ShownValue], list[ShownValue] | None]:
    """(foreach items, parameter values) of an entry, outermost frame first.

    Read from ``context`` when the entry has one; what it lacks (an older entry,
    or a future shape this version does not know) falls back to the key
    components: each foreach item by its digest, parameters unknown (None).
    """
    context = m.context if isinstance(m.context, dict) else {}
    frames = m.components.get("foreach") if isinstance(m.components, dict) else None
    frames = [f for f in frames if isinstance(f, dict)] if isinstance(frames, list) else []
    recorded = context.get("foreach")
    recorded = recorded if isinstance(recorded, list) and len(recorded) == len(frames) else None
    items = []
    for i, frame in enumerate(frames):
        own = recorded[i] if recorded and isinstance(recorded[i], dict) else {}
        value = own.get("value") if isinstance(own.get("value"), str) else None
        digest = own.get("digest") if isinstance(own.get("digest"), str) else None
        if value is None and digest is None:
            # the key's own identity of the item: its digest, else (an outer foreach
            # behind an inner join) the value Metaflow recorded, else its position
            digest = frame.get("item") if isinstance(frame.get("item"), str) else None
            if digest is None and isinstance(frame.get("value"), str):
                value = frame["value"]
        items.append(ShownValue(str(frame.get("var")), value, digest, str(frame.get("step"))))
    params = context.get("parameters")
    if not isinstance(params, dict):
        return items, None
    shown = []
    for name, doc in sorted(params.items()):
        doc = doc if isinstance(doc, dict) else {}
        value = doc.get("value") if isinstance(doc.get("value"), str) else None
        digest = doc.get("digest") if isinstance(doc.get("digest"), str) else None
        shown.append(ShownValue(str(name), value, digest))
    return items, shown


def _string_map(value) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise TypeError("observed dependencies must map names to strings")
    return dict(value)


def _string_list(value) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("merged must be a list of names")
    return list(value)


_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_XXH_RE = re.compile(r"^[0-9a-f]{32}$")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _str_map(value, values_re=None) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) and (values_re is None or values_re.match(v))
        for k, v in value.items()
    )


def _artifact_problem(name, a) -> str | None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        return "artifact name %r is not an identifier" % (name,)
    if not isinstance(a, dict):
        return "artifact %s is not an object" % name
    if not isinstance(a.get("sha"), str) or not _SHA_RE.match(a["sha"]):
        return "artifact %s: sha %r is not a content hash" % (name, a.get("sha"))
    if not isinstance(a.get("info", {}), dict):
        return "artifact %s: info is not an object" % name
    encoding = (a.get("info") or {}).get("encoding")
    if encoding is not None and not isinstance(encoding, str):
        return "artifact %s: encoding %r is not a string" % (name, encoding)
    if not isinstance(a.get("cas_raw", False), bool):
        return "artifact %s: cas_raw is not a boolean" % name
    size = a.get("stored_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        return "artifact %s: stored_size %r is not a size" % (name, size)
    xxh = a.get("stored_xxh")
    if xxh is not None and (not isinstance(xxh, str) or not _XXH_RE.match(xxh)):
        return "artifact %s: stored_xxh %r is not a digest" % (name, xxh)
    return None


def _transition_problem(t) -> str | None:
    if not isinstance(t, dict):
        return "transition is not an object"
    move = t.get("_transition")
    if move is not None:
        if not isinstance(move, dict):
            return "transition._transition is not an object"
        funcs = move.get("funcs")
        if not isinstance(funcs, list) or not all(
            isinstance(f, str) and _NAME_RE.match(f) for f in funcs
        ):
            return "transition names no valid steps (%r)" % (funcs,)
        if move.get("foreach") is not None and not isinstance(move["foreach"], str):
            return "transition foreach is not a name"
        if not isinstance(move.get("extra") or [], list):
            return "transition extra is not a list"
    for attr in ("_foreach_var",):
        if t.get(attr) is not None and not isinstance(t[attr], str):
            return "transition %s is not a name" % attr
    splits = t.get("_foreach_num_splits")
    if splits is not None and (not isinstance(splits, int) or isinstance(splits, bool)):
        return "transition _foreach_num_splits is not a number"
    return None


def _problem(d) -> str | None:
    """Why a parsed manifest document cannot be a valid entry (None if it can)."""
    for name in ("key", "flow", "step"):
        if not isinstance(d.get(name), str):
            return "%s is not a string" % name
    if not _NAME_RE.match(d["flow"]) or not _NAME_RE.match(d["step"]):
        return "flow or step is not a name"
    if not isinstance(d.get("components"), dict):
        return "components is not an object"
    if not isinstance(d.get("artifacts"), dict):
        return "artifacts is not an object"
    for name, a in d["artifacts"].items():
        problem = _artifact_problem(name, a)
        if problem:
            return problem
    problem = _transition_problem(d.get("transition"))
    if problem:
        return problem
    if not _is_number(d.get("created")):
        return "created is not a number"
    if d.get("expires") is not None and not _is_number(d["expires"]):
        return "expires is not a number"
    if not isinstance(d.get("origin", ""), str):
        return "origin is not a string"
    if d.get("body_seconds") is not None and not _is_number(d["body_seconds"]):
        return "body_seconds is not a number"
    for name in ("versions", "unrestored"):
        if d.get(name) is not None and not _str_map(d[name]):
            return "%s is not a map of strings" % name
    if d.get("passthrough") is not None and not _str_map(d["passthrough"], _SHA_RE):
        return "passthrough is not a map of content hashes"
    if d.get("static_key") is not None and not isinstance(d["static_key"], str):
        return "static_key is not a string"
    if d.get("context") is not None and not isinstance(d["context"], dict):
        return "context is not an object"
    if d.get("signature") is not None and not isinstance(d["signature"], str):
        return "signature is not a string"
    return None


def _hmac(secret: str, payload: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), payload, hashlib.sha256).hexdigest()
