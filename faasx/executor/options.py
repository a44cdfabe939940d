"""The executors' options, checked at construction.

A bad value fails where the user wrote it -- ``FaaSExecutor(...)`` or ``faasx.Executor(...)`` -- with
the option's name in the error, instead of minutes later in a manager's log on a compute node.  Types
are checked by typeguard on ``FaaSExecutor``'s signature (``TypeError`` naming the argument); this
module checks values (``ValueError``), one rule per option, as the stdlib pools check ``max_workers``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict

Rule = Callable[[str, Any], None]


def _fail(name: str, want: str, value: Any) -> None:
    raise ValueError(f"{name} must be {want}, got {value!r}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def positive(*, optional: bool = False, integer: bool = False, infinite: bool = False) -> Rule:
    """> 0; ``optional``: None allowed; ``integer``: a whole number; ``infinite``: math.inf allowed."""
    def check(name: str, value: Any) -> None:
        if value is None and optional:
            return
        if value == math.inf and infinite:
            return
        ok = _number(value) and value > 0 and math.isfinite(value) and (not integer or value == int(value))
        if not ok:
            _fail(name, ("a whole number" if integer else "a number") + " > 0"
                  + (" (or None)" if optional else ""), value)
    return check


def non_negative(*, optional: bool = False, integer: bool = False) -> Rule:
    def check(name: str, value: Any) -> None:
        if value is None and optional:
            return
        if not (_number(value) and value >= 0 and math.isfinite(value) and (not integer or value == int(value))):
            _fail(name, ("a whole number" if integer else "a number") + " >= 0" + (" (or None)" if optional else ""),
                  value)
    return check


def port(name: str, value: Any) -> None:
    if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536):
        _fail(name, "a TCP port (1-65535) or None", value)


def port_range(name: str, value: Any) -> None:
    if value is None:
        return
    if not (len(value) == 2 and all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in value)
            and value[0] < value[1]):
        _fail(name, "a (low, high) pair of TCP ports with low < high, or None", value)


def text(*, optional: bool = False) -> Rule:
    def check(name: str, value: Any) -> None:
        if value is None and optional:
            return
        if not isinstance(value, str) or not value.strip():
            _fail(name, "a non-empty string" + (" (or None)" if optional else ""), value)
    return check


def accelerators(name: str, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            _fail(name, "a number of devices >= 0 or a list of device ids", value)
        return
    ids = [str(a) for a in value]
    if any(not a.strip() for a in ids) or len(set(ids)) != len(ids):
        _fail(name, "a list of distinct, non-empty device ids", value)


def loopback(name: str, value: Any) -> None:
    if not isinstance(value, str) or not (value.startswith("127.") or value in ("::1", "localhost")):
        _fail(name, "a loopback address (127.x.y.z, ::1 or localhost)", value)


# ---- per executor -----------------------------------------------------------------------------------
FAAS_EXECUTOR_RULES: Dict[str, Rule] = {
    "label": text(),
    "address": text(optional=True),
    "loopback_address": loopback,
    "worker_port": port,
    "worker_port_range": port_range,
    "interchange_port_range": port_range,
    "cores_per_worker": positive(),
    "mem_per_worker": positive(optional=True),
    "max_workers_per_node": positive(optional=True, integer=True, infinite=True),
    "available_accelerators": accelerators,
    "prefetch_capacity": non_negative(optional=True, integer=True),
    "heartbeat_period": positive(),
    "heartbeat_threshold": positive(),
    "drain_period": positive(optional=True),
    "drain_margin": non_negative(),
    "max_retries_on_system_failure": non_negative(integer=True),
    "max_payload_size": positive(integer=True),
    "address_probe_timeout": positive(),
    "max_container_types": positive(optional=True, integer=True),
    "container_start_timeout": positive(optional=True),
}

STRATEGIES = ("simple", "htex_auto_scale", "none", None)


def check_faas_executor(**options: Any) -> None:
    """Check ``FaaSExecutor``'s options (those with a rule); ValueError naming the first bad one."""
    for name, value in options.items():
        FAAS_EXECUTOR_RULES[name](name, value)
    period, threshold = options.get("heartbeat_period"), options.get("heartbeat_threshold")
    if period is not None and threshold is not None and threshold <= period:
        raise ValueError(f"heartbeat_threshold ({threshold}) must exceed heartbeat_period ({period}): a peer is "
                         "declared lost after heartbeat_threshold seconds without a heartbeat")


def check_standalone(strategy: Any, strategy_period: Any, max_idletime: Any) -> None:
    """``faasx.Executor``'s own options (the rest go to ``FaaSExecutor``)."""
    if strategy not in STRATEGIES:
        _fail("strategy", " or ".join(repr(s) for s in STRATEGIES), strategy)
    positive()("strategy_period", strategy_period)
    non_negative()("max_idletime", max_idletime)


def max_workers_alias(options: Dict[str, Any]) -> Dict[str, Any]:
    """``max_workers`` (the stdlib pools' spelling) as ``max_workers_per_node``; <= 0 raises ValueError."""
    if "max_workers" not in options:
        return options
    options = dict(options)
    value = options.pop("max_workers")
    if "max_workers_per_node" in options:
        raise TypeError("give max_workers or max_workers_per_node, not both (they are the same option)")
    if value is not None:
        if not _number(value) or value <= 0:
            raise ValueError(f"max_workers must be greater than 0, got {value!r}")
        options["max_workers_per_node"] = value
    return options
