"""The registry's pure domain: the account and employee aggregates (no I/O).

Split by aggregate into :mod:`domain_accounts` and :mod:`domain_employees`; this module is the
single import point.
"""

from services.registry import domain_accounts as accounts
from services.registry import domain_employees as employees
from services.registry.domain_accounts import AccountState
from services.registry.domain_employees import EmployeeState

__all__ = ["AccountState", "EmployeeState", "accounts", "employees"]
