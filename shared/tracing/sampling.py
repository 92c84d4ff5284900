"""What the hot paths (`shared.record_trace`, `shared.tracing.recorded`, the unsampled-parent
shortcut) may decide without asking a tracer's sampler: consumes API tracers and SDK samplers;
produces the SDK tracer behind a tracer and `SamplerFacts`, worked out once per sampler object.

Facts are read from the SDK's own sampler types (a `ParentBased` whose `should_sample` is the
SDK's, and its delegates), never from descriptions, which nest: an outer sampler's description
contains its root's. Anything else gets the answer that leaves the decision to the SDK.
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.trace import Tracer
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    StaticSampler,
    TraceIdRatioBased,
)

ASK = -1  # a root rule: ask the sampler
ALWAYS = TraceIdRatioBased.TRACE_ID_LIMIT + 1  # a root rule: every trace id is under it
_BY_TRACE_ID = ("TraceIdRatioBased", "AlwaysOnSampler", "AlwaysOffSampler")
_FACTS: dict[int, tuple[Sampler, SamplerFacts]] = {}
_MAX_FACTS = 64


@dataclass(frozen=True, slots=True)
class SamplerFacts:
    """What a sampler decides for the spans the hot paths build."""

    # every child of an unsampled remote parent is dropped
    drops_unsampled_parent: bool
    # every child of a sampled remote parent is recorded and sampled, with the parent's trace
    # state and the span's own attributes
    follows_sampled_parent: bool
    # a root's decision from its trace id alone: sampled when the id's low 64 bits are under
    # this bound (the SDK ratio sampler's own test, with no attributes or trace state of the
    # sampler's), `ASK` the sampler (one described as deciding by trace id), or None (only
    # the SDK can decide: it passes the span's attributes and links)
    root_rule: int | None


def sdk_tracer(tracer: trace.Tracer) -> Tracer | None:
    """The SDK tracer behind `tracer`: itself, or a module's proxy tracer's once the SDK is set
    up; None without the SDK."""
    real = getattr(tracer, "_tracer", tracer)  # the API's ProxyTracer delegates to it
    return real if isinstance(real, Tracer) else None


def sampler_facts(sampler: Sampler) -> SamplerFacts:
    """`sampler`'s facts (cached with the sampler object itself)."""
    cached = _FACTS.get(id(sampler))
    if cached is not None and cached[0] is sampler:
        return cached[1]
    facts = _facts(sampler)
    if len(_FACTS) >= _MAX_FACTS:
        _FACTS.clear()
    _FACTS[id(sampler)] = (sampler, facts)
    return facts


def parent_decides(tracer: trace.Tracer) -> bool:
    """Whether `tracer`'s sampler drops every child of an unsampled remote parent, as the SDK's
    default `parentbased_*` samplers do; a process without the SDK records nothing anyway."""
    real = sdk_tracer(tracer)
    return real is None or sampler_facts(real.sampler).drops_unsampled_parent


def _facts(sampler: Sampler) -> SamplerFacts:
    parent_based = isinstance(sampler, ParentBased) and \
        type(sampler).should_sample is ParentBased.should_sample
    delegate = getattr(sampler, "_remote_parent_not_sampled", None) if parent_based else None
    drops = parent_based and _static(delegate) is Decision.DROP
    delegate = getattr(sampler, "_remote_parent_sampled", None) if parent_based else sampler
    follows = _static(delegate) is Decision.RECORD_AND_SAMPLE
    root = getattr(sampler, "_root", None) if parent_based else sampler
    return SamplerFacts(drops, follows, _root_rule(sampler, root))


def _static(sampler: object) -> Decision | None:
    """A StaticSampler's decision (it ignores its arguments); None for any other sampler."""
    return sampler.should_sample(None, 0, "").decision if type(sampler) is StaticSampler \
        else None


def _root_rule(sampler: Sampler, root: object) -> int | None:
    if type(root) is TraceIdRatioBased and \
            root.TRACE_ID_LIMIT == TraceIdRatioBased.TRACE_ID_LIMIT:
        return root.bound
    decision = _static(root)
    if decision is Decision.DROP:
        return 0
    if decision is Decision.RECORD_AND_SAMPLE:
        return ALWAYS
    description = sampler.get_description()
    if description.startswith(_BY_TRACE_ID) or description.startswith(
            tuple(f"ParentBased{{root:{by}" for by in _BY_TRACE_ID)):
        return ASK
    return None
