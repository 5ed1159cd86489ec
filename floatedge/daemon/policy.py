"""The policy interface the server consults on a timer, and the "manual" policy (the others: policies.py).

A policy is a pure decision over what the server knows (after Dynamic-OFA's runtime manager,
`UoS-EEC/DynamicOFA:runtime_demo/`: the policy is a function of a look-up table and recent measurements; the
model knows nothing of it). The governor (the next issue) implements `decide`; the server owns everything else:
calling it every `policy_interval_s`, skipping it while the operator pins the point, applying its decision
as a switch with the decision's reason, logging and counting it.

    class Policy(Protocol):
        name: str
        def params(self) -> dict: ...                 # what GET /v2/floatedge/policy shows
        def set_params(self, params: dict) -> None:   # POST /v2/floatedge/policy; ValueError names a bad key
        def decide(self, ctx: Context) -> Decision | None: ...   # None: stay
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from floatedge.oppoint import OperatingPoint


@dataclass(frozen=True)
class Context:
    """What a policy decides from: the point now, the bundle's calibration table (CA/RA per point), the
    widths, recent latencies (seconds, newest last), the latency objective, and the latest telemetry; and for
    the policies of policies.py, the time (`time.perf_counter()`), the recent requests as tuples (done, e2e
    seconds, seconds in the model call, λ_n, width, batch; governor.Request) and how many requests the runtime
    runs at once."""

    point: OperatingPoint
    table: list[dict]
    widths: tuple[float, ...]
    latencies_s: tuple[float, ...] = ()
    slo_s: float = 0.0
    telemetry: dict[str, Any] | None = None
    now: float = 0.0
    requests: tuple[tuple, ...] = ()
    servers: int = 1


@dataclass(frozen=True)
class Decision:
    """Move to (lambda_n, width) — either may be None to keep it — because of `reason` (logged, and the
    `reason` label of floatedge_switches_total is "policy")."""

    lambda_n: float | None
    width: float | None
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


class Policy(Protocol):
    name: str

    def params(self) -> dict[str, Any]: ...

    def set_params(self, params: dict[str, Any]) -> None: ...

    def decide(self, ctx: Context) -> Decision | None: ...


class ManualPolicy:
    """The point stays where the operator puts it (`POST /v2/floatedge/point`). It takes no parameters."""

    name = "manual"

    def params(self) -> dict[str, Any]:
        return {}

    def set_params(self, params: dict[str, Any]) -> None:
        if params:
            raise ValueError(f"the manual policy takes no parameters, got {', '.join(sorted(params))}")

    def decide(self, ctx: Context) -> Decision | None:
        return None


POLICIES = {"manual": ManualPolicy}


def make_policy(name: str, params: dict[str, Any] | None = None) -> Policy:
    from .policies import POLICIES as MORE  # static, ladder, governor (they import this module)

    known = {**POLICIES, **MORE}
    if name not in known:
        raise ValueError(f"unknown policy {name!r}; available: {', '.join(known)}")
    policy = known[name]()
    policy.set_params(dict(params or {}))
    return policy
