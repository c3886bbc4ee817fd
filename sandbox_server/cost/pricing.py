"""What an execution and a model call cost, from the tenant's price table. Pure functions."""

from __future__ import annotations

from sandbox_server.execution.spec import Limits, Usage
from sandbox_server.policy.models import Pricing

GB = 1e9  # memory is priced per decimal GB-second, as cloud price lists do
TOKENS_PER_PRICE_UNIT = 1_000_000


def execution_cost(pricing: Pricing, usage: Usage) -> float:
    """per_execution + cpu_second * CPU-s + wall_second * wall-s + memory_gb_second * peak GB * wall-s
    + egress_gb * GB through the egress proxy (both ways)."""
    wall = max(0.0, usage.wall_time_s)
    egress = max(0, usage.egress_bytes_sent) + max(0, usage.egress_bytes_received)
    return (
        pricing.per_execution
        + pricing.cpu_second * max(0.0, usage.cpu_time_s)
        + pricing.wall_second * wall
        + pricing.memory_gb_second * (max(0, usage.peak_memory_bytes) / GB) * wall
        + pricing.egress_gb * (egress / GB)
    )


def worst_case_cost(pricing: Pricing, limits: Limits, egress: bool = False) -> float:
    """The most an execution with these limits can be charged: what the budget reserves before it runs
    (``egress``: it has network, and may move up to ``limits.egress_bytes``)."""
    return execution_cost(pricing, Usage(
        wall_time_s=limits.wall_time_ms / 1000,
        cpu_time_s=limits.cpu_time_ms / 1000,
        peak_memory_bytes=limits.memory_bytes,
        egress_bytes_sent=limits.egress_bytes if egress else 0,
    ))


def usage_cost(pricing: Pricing, model: str, input_tokens: int, output_tokens: int) -> float | None:
    """The price of reported model usage; None when the tenant's price table does not name the model."""
    price = pricing.models.get(model)
    if price is None:
        return None
    return (input_tokens * price.input_per_million_tokens
            + output_tokens * price.output_per_million_tokens) / TOKENS_PER_PRICE_UNIT
