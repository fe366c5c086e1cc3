import pytest

from impls import impl_params


@pytest.fixture(params=impl_params("raftsqlite._ccodec", "raftsqlite.codec.fallback"))
def codec(request):
    """Each codec implementation in turn: the pure Python twin and the compiled module."""
    return request.param


@pytest.fixture(params=impl_params("raftsqlite._chash", "raftsqlite.codec.hashing"))
def h(request):
    """Each shard hash implementation in turn: the pure Python twin and the compiled module."""
    return request.param
