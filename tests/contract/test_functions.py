"""Functions promises, the same on both backends."""
from core.config import FunctionConfig

CONFIG = FunctionConfig(reserved_concurrency=3, provisioned_concurrency=1, memory_mb=256, timeout_seconds=10)


def test_publish_again_changes_nothing_then_delete_once(world):
    functions, name = world.backend.functions, world.unique("fn")
    first = functions.publish_function(name, "contract-endpoint", CONFIG)
    assert first.name == name and name in first.arn
    assert (first.reserved_concurrency, first.provisioned_concurrency) == (3, 1)
    assert first.code_sha256 and first.invoke_url.endswith("/invocations")
    assert functions.publish_function(name, "contract-endpoint", CONFIG) == first

    more = functions.publish_function(name, "contract-endpoint", FunctionConfig(
        reserved_concurrency=4, provisioned_concurrency=2, memory_mb=256, timeout_seconds=10))
    assert (more.reserved_concurrency, more.provisioned_concurrency) == (4, 2)
    assert more.code_sha256 == first.code_sha256

    assert functions.delete_function(name) is True
    assert functions.delete_function(name) is False
