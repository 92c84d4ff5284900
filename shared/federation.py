"""The wire between a federation's coordinator (services/federation) and its sites (the
trainer in site mode): round tasks on `federation.rounds`, site answers on `federation.updates`.

Only models and aggregates cross: a task carries the global model (and, to evaluate, the
candidate and the live model); a site's answer carries its clipped model update and sample
count, or histograms of its held-out scores per label (and per sensitive group), never a row.
With secure aggregation (shared/secagg.py) a `keys` task (round 0) asks for each site's X25519
public key, `fit` tasks carry the round's `agreement_keys`, a site's fit answer carries its
masked fixed-point update (uint64) instead of the clipped one and shares of its self seed and
pairwise seeds sealed to each peer, and each round's `unmask` task forwards those shares to
their recipients and asks its survivors for their own self-mask seed, their pairwise seeds with
the `dropped` sites only, and the opened shares of the other survivors' self seeds and of their
seeds with the dropped sites (which rebuild the seeds of a survivor lost before it answers).

Each message is one safetensors file (tensors as NumPy arrays, never pickle) whose metadata
holds the message's fields as sorted-key JSON; the Kafka headers carry an Ed25519 signature over
a domain tag and the whole value, and the signer's key id. A receiver verifies the signature
against its allow-list (shared/allowlist.py: the coordinator's `federation.pub` at a site; each
site's public key as `<site>.pub` at the coordinator) before it parses anything.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from safetensors import SafetensorError
from safetensors.numpy import load, save

from shared.allowlist import AllowList
from shared.events import HeaderList
from shared.principals import Principal
from shared.signing import verify

DOMAIN = b"lepton.federation.v1\n"
SIGNATURE_HEADER = "lepton.signature"
KEY_HEADER = "lepton.key_id"
METADATA_KEY = "lepton.federation"
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
# held-out scores are summarised as counts per logit bin (0.1 wide, open-ended at both ends)
LOGIT_EDGES: npt.NDArray[np.float64] = np.linspace(-12.0, 12.0, 241)
TASK_KINDS = frozenset({"fit", "evaluate", "keys", "unmask"})
UPDATE_KINDS = frozenset({"fit", "evaluate", "declined", "keys", "unmask"})

Name = Annotated[str, StringConstraints(min_length=1, max_length=100,
                                        pattern=r"^[a-z0-9_-]+(?:\.[a-z0-9_-]+)*$")]
Ident = Annotated[str, StringConstraints(min_length=1, max_length=200,
                                         pattern=r"^[A-Za-z0-9_.:-]+$")]
Arrays = dict[str, npt.NDArray[Any]]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoundTask(_Message):
    """What the coordinator asks of the selected sites in one round."""

    federation: Ident
    model: Name
    dataset: Name
    spec_hash: str = Field(max_length=64)
    round: int = Field(ge=0, le=100_000, description="0: key agreement.")
    rounds: int = Field(ge=1, le=100_000)
    kind: Literal["fit", "evaluate", "keys", "unmask"]
    sites: tuple[Name, ...] = Field(min_length=1, max_length=10_000)
    deadline: float = Field(description="Unix time after which answers are dropped as late.")
    architecture: dict[str, Any]
    feature_transform: dict[str, Any]
    local_epochs: float = Field(gt=0, le=1000)
    minibatch: int = Field(ge=1, le=1_000_000)
    learning_rate: float = Field(gt=0, le=100, description="Local SGD learning rate.")
    clip_norm: float = Field(gt=0, le=1e6, description="Update clipping norm (client level).")
    epsilon: float = Field(gt=0, le=1e3, description="Per-subject ε the coordinator asks each "
                           "site to spend over the whole federation (a site spends at most "
                           "its own spec's `epsilon_per_release`).")
    live: bool = Field(default=False, description="evaluate: the task also carries `live.*`.")
    agreement_keys: dict[Name, str] = Field(
        default_factory=dict, max_length=10_000, description="Secure aggregation (fit, "
        "unmask): each selected site's X25519 public key, base64; empty: plain updates.")
    dropped: tuple[Name, ...] = Field(default=(), max_length=10_000, description="unmask: "
                                      "the round's selected sites whose masks survivors reveal.")
    sealed_shares: dict[Name, dict[Name, str]] = Field(
        default_factory=dict, max_length=10_000, description="unmask: for each survivor, the "
        "bundles of shares the other survivors' fit answers sealed to it (sender → bundle).")


class SiteUpdate(_Message):
    """A site's answer to one task."""

    federation: Ident
    round: int = Field(ge=0, le=100_000)
    site: Name
    kind: Literal["fit", "evaluate", "declined", "keys", "unmask"]
    num_examples: int = Field(ge=0)
    update_norm: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    evaluation: dict[str, Any] = Field(default_factory=dict)
    privacy: dict[str, Any] = Field(default_factory=dict)
    reason: str = Field(default="", max_length=500)
    agreement_key: str = Field(default="", max_length=100,
                               description="keys: this site's X25519 public key, base64.")
    seeds: dict[Name, str] = Field(default_factory=dict, max_length=10_000, description=(
        "unmask: this site's pairwise seed (base64) with each dropped site named."))
    self_seed: str = Field(default="", max_length=100, description=(
        "unmask: this site's self-mask seed of the round (base64); it survived the round."))
    sealed_shares: dict[Name, str] = Field(default_factory=dict, max_length=10_000, description=(
        "fit (secure aggregation): for each peer, a Shamir share of this round's self seed "
        "and of each pairwise seed, sealed to that peer (base64)."))
    shares: dict[Name, str] = Field(default_factory=dict, max_length=10_000, description=(
        "unmask: the opened share (base64) of each other survivor's self seed."))
    pair_shares: dict[Name, dict[Name, str]] = Field(
        default_factory=dict, max_length=10_000, description="unmask: for each other "
        "survivor, the opened shares (base64) of its pairwise seed with each dropped site.")


class FederationMessageError(ValueError):
    """A message that is unsigned, wrongly signed, from a principal that may not send it, or
    malformed."""


M = TypeVar("M", RoundTask, SiteUpdate)


def encode(message: RoundTask | SiteUpdate, tensors: Arrays, signer: Principal
           ) -> tuple[bytes, HeaderList]:
    """The Kafka value and headers of a signed message."""
    body = orjson.dumps(message.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS).decode()
    value = save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                 metadata={METADATA_KEY: body})
    return value, [(SIGNATURE_HEADER, signer.sign(DOMAIN + value).encode()),
                   (KEY_HEADER, signer.key_id.encode())]


def _header(value: bytes) -> dict[str, Any]:
    size = int.from_bytes(value[:8], "little")
    if len(value) < 8 + size:
        raise FederationMessageError("truncated safetensors header")
    header = orjson.loads(value[8:8 + size])
    if not isinstance(header, dict):
        raise FederationMessageError("safetensors header is not an object")
    return header


def decode(value: bytes, headers: Any, allow: AllowList, cls: type[M]
           ) -> tuple[M, Arrays, str]:
    """Verify and parse a message (`headers` as confluent-kafka gives them): (message,
    tensors, signer's principal name)."""
    if len(value) > MAX_MESSAGE_BYTES:
        raise FederationMessageError(f"message over {MAX_MESSAGE_BYTES} bytes")
    found = {k: v if isinstance(v, bytes) else str(v).encode()
             for k, v in (headers.items() if isinstance(headers, dict) else headers or ())
             if v is not None}
    signature, kid = found.get(SIGNATURE_HEADER), found.get(KEY_HEADER)
    if signature is None or kid is None:
        raise FederationMessageError("unsigned message")
    principal = allow.lookup(kid.decode(errors="replace"))
    if principal is None:
        raise FederationMessageError("signed by a key that is not allowed")
    if not verify(principal.public, DOMAIN + value, signature.decode(errors="replace")):
        raise FederationMessageError(f"bad signature ({principal.name})")
    try:
        body = _header(value).get("__metadata__", {}).get(METADATA_KEY)
        message = cls.model_validate_json(body or "")
        tensors = load(value)
    except (orjson.JSONDecodeError, ValidationError, SafetensorError, ValueError, TypeError,
            AttributeError) as error:
        raise FederationMessageError(f"malformed {cls.__name__}: {error}") from None
    if message.kind not in principal.kinds:
        raise FederationMessageError(f"{principal.name} may not send {message.kind!r}")
    return message, tensors, principal.name


def histograms(logits: npt.NDArray[np.float64], labels: npt.NDArray[np.float64]
               ) -> dict[str, list[int]]:
    """Counts of held-out logits per bin of LOGIT_EDGES, for each label (what a site reports
    instead of scores)."""
    index = np.clip(np.searchsorted(LOGIT_EDGES, logits, side="right") - 1, 0,
                    len(LOGIT_EDGES) - 2)
    bins = len(LOGIT_EDGES) - 1
    positive = labels >= 0.5
    return {"positive": np.bincount(index[positive], minlength=bins).tolist(),
            "negative": np.bincount(index[~positive], minlength=bins).tolist()}
