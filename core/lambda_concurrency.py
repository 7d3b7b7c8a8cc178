"""Whether a function's reserved and provisioned concurrency fit the account (pure arithmetic).

AWS keeps at least 100 concurrent executions unreserved in each account and region for the
functions without reserved concurrency: PutFunctionConcurrency and PutProvisionedConcurrencyConfig
fail when they would leave fewer (PutFunctionConcurrency's documentation; new accounts may have a
limit of 10 in all, so nothing can be reserved there). GetAccountSettings' UnreservedConcurrentExecutions
is the limit minus what functions hold: what PutFunctionConcurrency reserved, and the provisioned
concurrency of functions without a reservation (it comes out of the unreserved pool), this
function's own included. So a re-run gives back what the function already holds before comparing.
"""
from __future__ import annotations

MIN_UNRESERVED = 100
QUOTA_HINT = ("or request a higher \"Concurrent executions\" quota for Lambda in this region (Service Quotas, "
              "quota code L-B99A9384)")


def held_concurrency(current_reserved: int | None, current_provisioned: int = 0) -> int:
    """What the function takes out of the unreserved pool now: its reservation, or without one, its
    provisioned concurrency."""
    return current_reserved if current_reserved is not None else current_provisioned


def reservable_concurrency(unreserved: int, current_reserved: int | None, current_provisioned: int = 0) -> int:
    """The most this function may reserve (or take as provisioned concurrency without reserving):
    the unreserved pool, with what it holds now given back, less the 100 AWS keeps."""
    return max(0, unreserved + held_concurrency(current_reserved, current_provisioned) - MIN_UNRESERVED)


def concurrency_problem(account_limit: int, unreserved: int, current_reserved: int | None,
                        reserved: int | None, provisioned: int, current_provisioned: int = 0) -> str | None:
    """What to change when `reserved` (None: no reservation) and `provisioned` do not fit, else None.

    account_limit, unreserved: GetAccountSettings' AccountLimit.ConcurrentExecutions and
    .UnreservedConcurrentExecutions; current_reserved: the function's reservation now (None when it
    has none or does not exist yet); current_provisioned: the provisioned concurrency its versions and
    aliases have now. Provisioned concurrency comes out of the reservation when there is one
    (core.config checks provisioned <= reserved), else out of the unreserved pool.
    """
    most = reservable_concurrency(unreserved, current_reserved, current_provisioned)
    setting, wanted = (("reserved_concurrency", reserved) if reserved is not None
                       else ("provisioned_concurrency", provisioned))
    if wanted == 0 or wanted <= most:
        return None
    free = unreserved + held_concurrency(current_reserved, current_provisioned)
    account = (f"this account's Lambda concurrency limit in the region is {account_limit}, of which "
               f"{free} is not reserved by other functions, and AWS keeps "
               f"{MIN_UNRESERVED} unreserved")
    if most == 0:
        change = ("set function.reserved_concurrency to null (unreserved) and function.provisioned_concurrency "
                  "to 0")
    elif reserved is not None:
        change = f"lower function.reserved_concurrency to {most} or less"
    else:
        change = f"lower function.provisioned_concurrency to {most} or less"
    return f"function.{setting}={wanted} does not fit: {account}. {change[0].upper()}{change[1:]}, {QUOTA_HINT}."
