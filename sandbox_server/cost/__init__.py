"""Pricing executions and model usage, and holding tenants to their budgets (reserve, then settle)."""

from sandbox_server.cost.budgeter import Budgeter, BudgetEvents, BudgetExceeded
from sandbox_server.cost.pricing import execution_cost, usage_cost, worst_case_cost

__all__ = ["BudgetEvents", "BudgetExceeded", "Budgeter", "execution_cost", "usage_cost", "worst_case_cost"]
