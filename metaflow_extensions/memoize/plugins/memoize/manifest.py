"""Cache entries: the manifest document, its (de)serialization and signature.

A manifest is small JSON: the key and its components, the artifacts the step
produced (name -> Metaflow content hash and datastore info), the recorded
transition, times, origin and versions. Blobs live apart, content-addressed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .exceptions import CorruptEntry
from .keys import canonical_json

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
    format: int = MANIFEST_FORMAT
    signature: str | None = None

    def is_expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    @property
    def blob_shas(self):
        return sorted({a.sha for a in self.artifacts.values()})

    @property
    def artifact_bytes(self) -> int:
        return sum((a.stored_size or 0) for a in self.artifacts.values())

    def to_dict(self, include_signature=True) -> dict[str, Any]:
        d = asdict(self)
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
                format=d["format"],
                signature=d.get("signature"),
            )
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
            raise CorruptEntry("manifest does not parse: %s" % err, key=expected_key)
        if expected_key is not None and m.key != expected_key:
            raise CorruptEntry(
                "manifest is for key %s, not %s" % (m.key, expected_key), key=expected_key
            )
        return m


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


def _hmac(secret: str, payload: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), payload, hashlib.sha256).hexdigest()
