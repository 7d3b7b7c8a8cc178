"""Whether a function's reserved and provisioned concurrency fit the account (pure arithmetic).

AWS keeps at least 100 concurrent executions unreserved in each account and region for the
functions without reserved concurrency: PutFunctionConcurrency and PutProvisionedConcurrencyConfig
fail when they would leave fewer (PutFunctionConcurrency's documentation; new accounts may have a
limit of 10 in all, so nothing can be reserved there). GetAccountSettings' UnreservedConcurrentExecutions
is the limit minus what PutFunctionConcurrency reserved, this function's own reservation included.
"""
from __future__ import annotations

MIN_UNRESERVED = 100
QUOTA_HINT = ("or request a higher \"Concurrent executions\" quota for Lambda in this region (Service Quotas, "
              "quota code L-B99A9384)")


def reservable_concurrency(unreserved: int, current_reserved: int | None) -> int:
    """The most this function may reserve (or take as provisioned concurrency without reserving):
    the unreserved pool, with its own current reservation given back, less the 100 AWS keeps."""
    return max(0, unreserved + (current_reserved or 0) - MIN_UNRESERVED)


def concurrency_problem(account_limit: int, unreserved: int, current_reserved: int | None,
                        reserved: int | None, provisioned: int) -> str | None:
    """What to change when `reserved` (None: no reservation) and `provisioned` do not fit, else None.

    account_limit, unreserved: GetAccountSettings' AccountLimit.ConcurrentExecutions and
    .UnreservedConcurrentExecutions; current_reserved: the function's reservation now (None when it
    has none or does not exist yet). Provisioned concurrency comes out of the reservation when there
    is one (core.config checks provisioned <= reserved), else out of the unreserved pool.
    """
    most = reservable_concurrency(unreserved, current_reserved)
    setting, wanted = (("reserved_concurrency", reserved) if reserved is not None
                       else ("provisioned_concurrency", provisioned))
    if wanted == 0 or wanted <= most:
        return None
    account = (f"this account's Lambda concurrency limit in the region is {account_limit}, of which "
               f"{unreserved + (current_reserved or 0)} is not reserved by other functions, and AWS keeps "
               f"{MIN_UNRESERVED} unreserved")
    if most == 0:
        change = ("set function.reserved_concurrency to null (unreserved) and function.provisioned_concurrency "
                  "to 0")
    elif reserved is not None:
        change = f"lower function.reserved_concurrency to {most} or less"
    else:
        change = f"lower function.provisioned_concurrency to {most} or less"
    return f"function.{setting}={wanted} does not fit: {account}. {change[0].upper()}{change[1:]}, {QUOTA_HINT}."
