"""Stage 5: strategies, the experiment layer and weight factors. Pure functions over a policy that is
loaded from YAML and validated once at start-up (docs/policy.md has the reference).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rta.v1 import decision_pb2 as pb

from . import bucketing

WEIGHT_MIN, WEIGHT_MAX = 0.2, 5.0  # the range Tencent honours; outside it is ignored
AUDIENCE_FIELDS = ("known", "is_member", "order_count", "days_since_last_order", "days_since_first_seen",
                   "monetary_yuan", "wecom_friend", "channel_count")
_STRATEGY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Condition(_Strict):
    """One test of a profile field; every bound given must hold. A missing value (NaN) fails."""

    field: Literal[AUDIENCE_FIELDS]  # type: ignore[valid-type]
    eq: float | bool | None = None
    min: float | None = None  # inclusive
    max: float | None = None  # inclusive

    @model_validator(mode="after")
    def _some_test(self):
        if self.eq is None and self.min is None and self.max is None:
            raise ValueError(f"condition on {self.field!r} needs eq, min or max")
        return self


class Audience(_Strict):
    devices: Literal["any", "known", "unknown"] = "any"  # whether a profile must (not) be found
    include_segments: tuple[str, ...] = ()  # the profile must be in at least one of these
    exclude_segments: tuple[str, ...] = ()  # the profile must be in none of these
    where: tuple[Condition, ...] = ()  # all must hold (known devices only)


class Answer(_Strict):
    """A fixed answer: the fallback when degraded, or the holdout's answer."""

    decision: Literal["BID", "NO_BID"]
    weight_factor: Annotated[float, Field(ge=WEIGHT_MIN, le=WEIGHT_MAX)] = 1.0


class Weight(_Strict):
    """weight_factor = clamp(score / reference_score, min, max)."""

    reference_score: Annotated[float, Field(gt=0, le=1)]
    min: Annotated[float, Field(ge=WEIGHT_MIN, le=WEIGHT_MAX)] = WEIGHT_MIN
    max: Annotated[float, Field(ge=WEIGHT_MIN, le=WEIGHT_MAX)] = WEIGHT_MAX


class Strategy(_Strict):
    id: str
    audience: Audience = Audience()
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.0
    weight: Weight
    target_cpa_fen: Annotated[int, Field(gt=0)] | None = None
    dsp_tag: Annotated[str, Field(max_length=20)] = ""
    fallback: Answer

    @field_validator("id")
    @classmethod
    def _registered_id(cls, v: str) -> str:
        if not _STRATEGY_ID.fullmatch(v):
            raise ValueError("strategy ids are 1-32 letters, digits, '_' or '-' (Tencent's rule)")
        return v


class Experiment(_Strict):
    name: str
    salt: Annotated[str, Field(min_length=1)]
    holdout_share: Annotated[float, Field(ge=0, lt=1)] = 0.0
    holdout_answer: Answer = Answer(decision="BID", weight_factor=1.0)  # as if RTA were off


class CacheTtl(_Strict):
    bid: Annotated[int, Field(ge=0, le=7 * 86400)] = 3600
    no_bid: Annotated[int, Field(ge=0, le=7 * 86400)] = 1800
    degraded: Annotated[int, Field(ge=0, le=7 * 86400)] = 60


class Policy(_Strict):
    strategies: Annotated[tuple[Strategy, ...], Field(min_length=1)]
    experiment: Experiment | None = None
    cache_ttl_seconds: CacheTtl = CacheTtl()

    @model_validator(mode="after")
    def _unique_ids(self):
        ids = [s.id for s in self.strategies]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate strategy ids: {dupes}")
        return self

    @property
    def by_id(self) -> dict[str, Strategy]:
        return {s.id: s for s in self.strategies}


def load_policy(path: str | Path) -> Policy:
    """Parse and validate; raises pydantic.ValidationError (every problem listed) or OSError/YAMLError."""
    with open(path, encoding="utf-8") as f:
        return Policy.model_validate(yaml.safe_load(f) or {})


@dataclass(slots=True)
class Verdict:
    decision: int  # pb.BID / pb.NO_BID
    weight_factor: float
    reason: int


def audience_admits(audience: Audience, fields: dict, segments) -> bool:
    known = fields["known"]
    if audience.devices == "known" and not known or audience.devices == "unknown" and known:
        return False
    if audience.include_segments and not any(s in segments for s in audience.include_segments):
        return False
    if audience.exclude_segments and any(s in segments for s in audience.exclude_segments):
        return False
    for cond in audience.where:
        value = fields.get(cond.field)
        if value is None or isinstance(value, float) and math.isnan(value):
            return False
        if cond.eq is not None and float(value) != float(cond.eq):
            return False
        if cond.min is not None and value < cond.min or cond.max is not None and value > cond.max:
            return False
    return True


def weight_factor(weight: Weight, score: float) -> float:
    return min(weight.max, max(weight.min, score / weight.reference_score))


def judge(strategy: Strategy, fields: dict, segments, score: float) -> Verdict:
    """The verdict of one strategy for a scored, non-holdout request."""
    if not audience_admits(strategy.audience, fields, segments):
        return Verdict(pb.NO_BID, 0.0, pb.AUDIENCE_EXCLUDED)
    if score < strategy.threshold:
        return Verdict(pb.NO_BID, 0.0, pb.BELOW_THRESHOLD)
    return Verdict(pb.BID, round(weight_factor(strategy.weight, score), 4), pb.SCORED)


def fixed(answer: Answer, reason: int) -> Verdict:
    if answer.decision == "BID":
        return Verdict(pb.BID, answer.weight_factor, reason)
    return Verdict(pb.NO_BID, 0.0, reason)


def experiment_bucket(experiment: Experiment | None, one_id: str, best_id: str) -> tuple[int, bool]:
    """(bucket, in holdout), keyed by the person's OneID when known so all their devices agree."""
    if experiment is None:
        return 0, False
    b = bucketing.bucket(experiment.salt, one_id or best_id)
    return b, bucketing.in_holdout(b, experiment.holdout_share)
