"""The Lambda concurrency check's arithmetic: AWS keeps 100 executions unreserved per account and region."""
import pytest

from core.lambda_concurrency import concurrency_problem, reservable_concurrency


@pytest.mark.parametrize("unreserved, current, expected", [
    (1000, None, 900), (1000, 100, 1000), (150, None, 50), (100, None, 0), (10, None, 0), (0, 5, 0),
])
def test_reservable_concurrency(unreserved, current, expected):
    assert reservable_concurrency(unreserved, current) == expected


def test_the_default_configuration_fits_a_standard_account():
    assert concurrency_problem(1000, 1000, None, reserved=100, provisioned=5) is None


def test_a_new_account_limited_to_10_can_reserve_nothing():
    problem = concurrency_problem(10, 10, None, reserved=100, provisioned=5)
    assert problem.startswith("function.reserved_concurrency=100 does not fit")
    assert "limit in the region is 10" in problem
    assert "Set function.reserved_concurrency to null (unreserved) and function.provisioned_concurrency to 0" in problem
    assert "quota" in problem
    assert concurrency_problem(10, 10, None, reserved=None, provisioned=0) is None  # what it suggests fits
    assert concurrency_problem(10, 10, None, reserved=0, provisioned=0) is None  # 0 reserves nothing


def test_the_functions_own_reservation_is_given_back_before_comparing():
    # 1000 in all; this function reserves 100 and another 100: 800 unreserved.
    assert concurrency_problem(1000, 800, 100, reserved=800, provisioned=5) is None
    problem = concurrency_problem(1000, 800, 100, reserved=801, provisioned=5)
    assert "Lower function.reserved_concurrency to 800 or less" in problem
    assert "of which 900 is not reserved by other functions" in problem


def test_provisioned_without_reservation_comes_out_of_the_unreserved_pool():
    assert concurrency_problem(1000, 150, None, reserved=None, provisioned=50) is None
    problem = concurrency_problem(1000, 150, None, reserved=None, provisioned=51)
    assert problem.startswith("function.provisioned_concurrency=51 does not fit")
    assert "Lower function.provisioned_concurrency to 50 or less" in problem


def test_a_rerun_gives_back_the_provisioned_concurrency_the_function_already_holds():
    """Without a reservation, the function's provisioned 50 is already out of the unreserved 100: the
    same setting again fits, one more does not."""
    assert concurrency_problem(1000, 100, None, reserved=None, provisioned=50, current_provisioned=50) is None
    problem = concurrency_problem(1000, 100, None, reserved=None, provisioned=51, current_provisioned=50)
    assert "Lower function.provisioned_concurrency to 50 or less" in problem
    assert "of which 150 is not reserved by other functions" in problem
    # With a reservation, provisioned concurrency comes out of it: only the reservation is given back.
    assert concurrency_problem(1000, 900, 100, reserved=100, provisioned=50, current_provisioned=50) is None
    assert reservable_concurrency(900, 100, current_provisioned=50) == 900
