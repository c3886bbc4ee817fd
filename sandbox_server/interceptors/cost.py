"""Cost: reserve each execution's worst-case cost against its tenant's budgets before it runs, settle the actual
cost after (sandbox_server/cost/budgeter.py says what is charged when). Sits between guardrails (a refused
request spends nothing) and audit (the record carries the settled cost).

The servicer drives the per-call gate through ``context.budget_gate()``: ``reserve`` before admission (a
request over budget never queues), ``started`` once it has its slot, ``settle`` with the result. When the
call ends, whatever was reserved and not settled is released or charged as the budgeter decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from sandbox_server.context import current_budget
from sandbox_server.cost.budgeter import Budgeter, Reservation
from sandbox_server.execution.spec import ExecutionResult, ExecutionSpec
from sandbox_server.interceptors._wrap import StreamBehavior, UnaryBehavior, wrap_handler
from sandbox_server.policy.caller import TenantPolicies, caller_policy
from sandbox_server.telemetry import phase

BUDGETED = frozenset({"/sandbox.v1.Sandbox/Execute", "/sandbox.v1.Sandbox/ExecuteStream"})


class CallBudget:
    """One call's reservations, by execution id."""

    def __init__(self, budgeter: Budgeter, policies: TenantPolicies) -> None:
        self.budgeter = budgeter
        self.policies = policies
        self._held: dict[str, Reservation] = {}

    async def reserve(self, spec: ExecutionSpec) -> None:
        tenant, policy = caller_policy(self.policies)
        with phase("budget"):
            self._held[spec.execution_id] = await self.budgeter.reserve(tenant, policy, spec)

    def started(self, spec: ExecutionSpec) -> None:
        res = self._held.get(spec.execution_id)
        if res is not None:
            self.budgeter.started(res)

    async def settle(self, spec: ExecutionSpec, result: ExecutionResult) -> float:
        res = self._held.pop(spec.execution_id, None)
        if res is None:
            return 0.0
        return await self.budgeter.settle(res, spec.execution_id, result.usage)

    async def finish(self, exc: BaseException | None) -> None:
        went_away = isinstance(exc, asyncio.CancelledError | GeneratorExit)
        held, self._held = self._held, {}
        for execution_id, res in held.items():
            await self.budgeter.abandon(res, execution_id, client_went_away=went_away)


class CostInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, budgeter: Budgeter, policies: TenantPolicies) -> None:
        self.budgeter = budgeter
        self.policies = policies

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler_call_details.method not in BUDGETED:
            return handler
        budgeter, policies = self.budgeter, self.policies

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                gate = CallBudget(budgeter, policies)
                token = current_budget.set(gate)
                failure: BaseException | None = None
                try:
                    return await behavior(request, context)
                except BaseException as exc:
                    failure = exc
                    raise
                finally:
                    current_budget.reset(token)
                    await asyncio.shield(gate.finish(failure))

            return wrapped

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                gate = CallBudget(budgeter, policies)
                token = current_budget.set(gate)
                failure: BaseException | None = None
                try:
                    async for item in behavior(request, context):
                        yield item
                except BaseException as exc:
                    failure = exc
                    raise
                finally:
                    current_budget.reset(token)
                    await asyncio.shield(gate.finish(failure))

            return wrapped

        return wrap_handler(handler, unary, stream)
