import pytest

from engine import shapes


@pytest.mark.parametrize("i, k, s, p, d, o", [
    (56, 3, 1, 1, 1, 56), (56, 3, 2, 1, 1, 28), (224, 7, 2, 3, 1, 112), (28, 3, 1, 4, 4, 28),
    (5, 3, 3, 0, 1, 1), (11, 5, 2, 2, 2, 4), (1, 1, 1, 0, 1, 1),
])
def test_conv_output_size(i, k, s, p, d, o):
    assert shapes.conv_output_size(i, k, s, p, p, d) == o


def test_same_padding_is_same_upper():
    assert shapes.same_padding(8, 3, 2, 1) == (0, 1)     # odd total: extra at the end
    assert shapes.same_padding(7, 3, 2, 1) == (1, 1)
    assert shapes.same_padding(10, 4, 1, 1) == (1, 2)
    assert shapes.same_padding(28, 3, 1, 4) == (4, 4)
    for i in range(1, 30):
        for s in (1, 2, 3):
            pb, pe = shapes.same_padding(i, 3, s, 2)
            assert shapes.conv_output_size(i, 3, s, pb, pe, 2) == -(-i // s)


def test_resolve_padding_forms():
    r = shapes.resolve_padding
    assert r(1, (9, 9), (3, 3), (1, 1), (1, 1)) == ((1, 1), (1, 1))
    assert r((1, 2), (9, 9), (3, 3), (1, 1), (1, 1)) == ((1, 1), (2, 2))
    assert r((1, 2, 3, 4), (9, 9), (3, 3), (1, 1), (1, 1)) == ((1, 3), (2, 4))
    assert r("valid", (9, 9), (3, 3), (1, 1), (1, 1)) == ((0, 0), (0, 0))
    with pytest.raises(ValueError, match="padding"):
        r(-1, (9, 9), (3, 3), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="padding"):
        r((1, 2, 3), (9, 9), (3, 3), (1, 1), (1, 1))


def test_conv_output_shape_rejects_too_large_kernel():
    with pytest.raises(ValueError, match="larger than the padded input"):
        shapes.conv_output_shape((2, 9), (3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1))


def test_pool_output_size_ceil_mode():
    assert shapes.pool_output_size(5, 2, 2, 0, 1, ceil_mode=False) == 2
    assert shapes.pool_output_size(5, 2, 2, 0, 1, ceil_mode=True) == 3
    # the last window would start in the right padding only: dropped, as in PyTorch
    assert shapes.pool_output_size(6, 3, 3, 1, 1, ceil_mode=True) == 3


def test_transposed_output_size_and_padding():
    assert shapes.conv_transpose_output_size(56, 4, 2, 1, 1, 0, 1) == 112
    assert shapes.transpose_output_padding(5, 3, 2, 1, 1, 1, 10, 0) == 1
    with pytest.raises(ValueError, match="impossible"):
        shapes.transpose_output_padding(5, 3, 2, 1, 1, 1, 12, 0)


def test_receptive_field():
    assert shapes.receptive_field([(3, 1)] * 3) == (7, 1)
    assert shapes.receptive_field([(7, 2), (3, 2), (3, 1, 2)]) == (7 + 2 * 2 + 2 * 2 * 4, 4)
    # a WaveNet stack of k=2 dilations 1..512 sees 1024 samples
    assert shapes.receptive_field([(2, 1, 2 ** i) for i in range(10)]) == (1024, 1)
