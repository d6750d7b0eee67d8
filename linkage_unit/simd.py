"""SIMD vocabulary for the compare stage's kernels (block -> **compare** -> solve).

numba compiles a loop the way LLVM's auto-vectoriser sees fit; for the Dice kernels that is
fast only where the CPU has a vector popcount (AVX-512 VPOPCNTDQ). This module lets numba
code say what it means instead: a small vector type of 64-bit lanes and the handful of
operations the kernels need, each lowered to one LLVM instruction or intrinsic. The kernels
in ``kernels.py`` read like C intrinsics code, and LLVM still does register allocation and
scheduling for whatever CPU numba compiles for.

Everything here is generic LLVM IR, valid on every target, except :func:`nibble_popcount`
and :func:`sum_bytes`, which call the AVX2 instructions VPSHUFB and VPSADBW and may only be
compiled (that is, called) where the CPU has AVX2: ``kernels.py`` only calls them on its AVX2
path. No index is bounds-checked or wrapped: callers pass in-range, non-negative indices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

__all__ = [
    "U64x4",
    "U64x8",
    "add",
    "add_bytes",
    "and_",
    "element",
    "element_at",
    "any_at_least",
    "lane",
    "load4",
    "load4_at",
    "load8",
    "load8_at",
    "may_reach",
    "nibble_popcount",
    "popcount",
    "splat4",
    "splat8",
    "sum_bytes",
    "vector4",
    "zeros4",
    "zeros8",
]

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_BYTES32 = ir.VectorType(_I8, 32)


class VectorU64(types.Type):
    """A vector of ``lanes`` unsigned 64-bit integers, held in one SIMD register (or two)."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        super().__init__(name=f"u64x{lanes}")


@register_model(VectorU64)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm: Any, fe_type: VectorU64) -> None:
        super().__init__(dmm, fe_type, ir.VectorType(_I64, fe_type.lanes))


U64x4 = VectorU64(4)
U64x8 = VectorU64(8)


def _vector(lanes: int) -> ir.VectorType:
    return ir.VectorType(_I64, lanes)


def _element_pointer(
    context: Any, builder: Any, array_type: Any, array: Any, indices: list[Any]
) -> Any:
    view = context.make_array(array_type)(context, builder, array)
    return cgutils.get_item_pointer2(
        context,
        builder,
        data=view.data,
        shape=cgutils.unpack_tuple(builder, view.shape),
        strides=cgutils.unpack_tuple(builder, view.strides),
        layout=array_type.layout,
        inds=indices,
        wraparound=False,
    )


def _splat_value(builder: Any, value: Any, lanes: int) -> Any:
    vector = _vector(lanes)
    first = builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.Constant(_I32, 0))
    mask = ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes)
    return builder.shuffle_vector(first, ir.Constant(vector, ir.Undefined), mask)


def _typed(function: Any) -> Callable[..., Any]:
    # numba intrinsics are called from jitted code only; to mypy they are plain callables.
    return cast(Callable[..., Any], function)


def _make_load(lanes: int, dimensions: int) -> Callable[..., Any]:
    vector_type = VectorU64(lanes)

    def typer(typing_context: Any, array: Any, index: Any) -> Any:  # pragma: no cover
        signature = vector_type(array, index)

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            pointer = _element_pointer(context, builder, sig.args[0], args[0], [args[1]])
            return builder.load(builder.bitcast(pointer, _vector(lanes).as_pointer()), align=8)

        return signature, codegen

    def typer_2d(typing_context: Any, array: Any, row: Any, column: Any) -> Any:  # pragma: no cover
        signature = vector_type(array, row, column)

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            pointer = _element_pointer(context, builder, sig.args[0], args[0], [args[1], args[2]])
            return builder.load(builder.bitcast(pointer, _vector(lanes).as_pointer()), align=8)

        return signature, codegen

    return _typed(intrinsic(typer if dimensions == 1 else typer_2d))


def _make_splat(lanes: int) -> Callable[..., Any]:
    vector_type = VectorU64(lanes)

    @intrinsic
    def splat(typing_context: Any, array: Any, index: Any) -> Any:  # pragma: no cover
        """``array[index]`` (1-D) in every lane: a broadcast load."""
        signature = vector_type(array, index)

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            pointer = _element_pointer(context, builder, sig.args[0], args[0], [args[1]])
            return _splat_value(builder, builder.load(pointer), lanes)

        return signature, codegen

    return _typed(splat)


def _make_zeros(lanes: int) -> Callable[..., Any]:
    vector_type = VectorU64(lanes)

    @intrinsic
    def zeros(typing_context: Any) -> Any:  # pragma: no cover
        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return ir.Constant(_vector(lanes), [0] * lanes)

        return vector_type(), codegen

    return _typed(zeros)


load4 = _make_load(4, 2)
"""``load4(array, row, column)``: 4 consecutive uint64 of a 2-D array from (row, column)."""
load8 = _make_load(8, 2)
"""``load8(array, row, column)``: 8 consecutive uint64 of a 2-D array from (row, column)."""
load4_at = _make_load(4, 1)
"""``load4_at(array, index)``: 4 consecutive uint64 (or int64) of a 1-D array."""
load8_at = _make_load(8, 1)
"""``load8_at(array, index)``: 8 consecutive uint64 (or int64) of a 1-D array."""
splat4 = _make_splat(4)
splat8 = _make_splat(8)
zeros4 = _make_zeros(4)
zeros8 = _make_zeros(8)


@intrinsic
def _and(typing_context: Any, left: Any, right: Any) -> Any:  # pragma: no cover
    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.and_(args[0], args[1])

    return left(left, right), codegen


@intrinsic
def _add(typing_context: Any, left: Any, right: Any) -> Any:  # pragma: no cover
    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.add(args[0], args[1])

    return left(left, right), codegen


@intrinsic
def _popcount(typing_context: Any, value: Any) -> Any:  # pragma: no cover
    scalar = not isinstance(value, VectorU64)
    if scalar and value != types.uint64:
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        if scalar:
            return builder.ctpop(args[0])
        lanes = sig.args[0].lanes
        function_type = ir.FunctionType(_vector(lanes), [_vector(lanes)])
        function = cgutils.get_or_insert_function(
            builder.module, function_type, f"llvm.ctpop.v{lanes}i64"
        )
        return builder.call(function, [args[0]])

    return value(value), codegen


@intrinsic
def _vector4(typing_context: Any, first: Any, second: Any, third: Any, fourth: Any) -> Any:
    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:  # pragma: no cover
        vector = ir.Constant(_vector(4), ir.Undefined)
        for index, value in enumerate(args):
            vector = builder.insert_element(vector, value, ir.Constant(_I32, index))
        return vector

    return U64x4(types.uint64, types.uint64, types.uint64, types.uint64), codegen


@intrinsic
def _element(typing_context: Any, array: Any, row: Any, column: Any) -> Any:  # pragma: no cover
    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        pointer = _element_pointer(context, builder, sig.args[0], args[0], [args[1], args[2]])
        return builder.load(pointer)

    return types.uint64(array, row, column), codegen


@intrinsic
def _element_at(typing_context: Any, array: Any, index: Any) -> Any:  # pragma: no cover
    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.load(_element_pointer(context, builder, sig.args[0], args[0], [args[1]]))

    return types.uint64(array, index), codegen


@intrinsic
def _add_bytes(typing_context: Any, left: Any, right: Any) -> Any:  # pragma: no cover
    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        total = builder.add(builder.bitcast(args[0], _BYTES32), builder.bitcast(args[1], _BYTES32))
        return builder.bitcast(total, _vector(4))

    return U64x4(U64x4, U64x4), codegen


_NIBBLE_POPCOUNTS = [0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4] * 2


@intrinsic
def _nibble_popcount(typing_context: Any, vector: Any) -> Any:  # pragma: no cover
    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        function_type = ir.FunctionType(_BYTES32, [_BYTES32, _BYTES32])
        function = cgutils.get_or_insert_function(
            builder.module, function_type, "llvm.x86.avx2.pshuf.b"
        )
        table = ir.Constant(_BYTES32, _NIBBLE_POPCOUNTS)
        looked_up = builder.call(function, [table, builder.bitcast(args[0], _BYTES32)])
        return builder.bitcast(looked_up, _vector(4))

    return U64x4(U64x4), codegen


@intrinsic
def _sum_bytes(typing_context: Any, vector: Any) -> Any:  # pragma: no cover
    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        function_type = ir.FunctionType(_vector(4), [_BYTES32, _BYTES32])
        function = cgutils.get_or_insert_function(
            builder.module, function_type, "llvm.x86.avx2.psad.bw"
        )
        zero = ir.Constant(_BYTES32, [0] * 32)
        return builder.call(function, [builder.bitcast(args[0], _BYTES32), zero])

    return U64x4(U64x4), codegen


@intrinsic
def _lane(typing_context: Any, vector: Any, index: Any) -> Any:  # pragma: no cover
    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.extract_element(args[0], args[1])

    return types.uint64(vector, index), codegen


def _any_lane(builder: Any, mask: Any, lanes: int) -> Any:
    bits = builder.bitcast(mask, ir.IntType(lanes))
    return builder.icmp_unsigned("!=", bits, ir.Constant(ir.IntType(lanes), 0))


@intrinsic
def _any_at_least(typing_context: Any, vector: Any, floor: Any) -> Any:  # pragma: no cover
    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        lanes = sig.args[0].lanes
        floor_value = context.cast(builder, args[1], sig.args[1], types.int64)
        mask = builder.icmp_signed(">=", args[0], _splat_value(builder, floor_value, lanes))
        return _any_lane(builder, mask, lanes)

    return types.boolean(vector, floor), codegen


@intrinsic
def _may_reach(
    typing_context: Any, partial: Any, rest_right: Any, rest_left: Any, floor: Any
) -> Any:  # pragma: no cover
    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        lanes = sig.args[0].lanes
        rest_left_value = context.cast(builder, args[2], sig.args[2], types.int64)
        floor_value = context.cast(builder, args[3], sig.args[3], types.int64)
        floor_vector = _splat_value(builder, floor_value, lanes)
        by_right = builder.icmp_signed(">=", builder.add(args[0], args[1]), floor_vector)
        by_left = builder.icmp_signed(
            ">=", builder.add(args[0], _splat_value(builder, rest_left_value, lanes)), floor_vector
        )
        return _any_lane(builder, builder.and_(by_right, by_left), lanes)

    return types.boolean(partial, rest_right, rest_left, floor), codegen


and_ = _typed(_and)
"""Lane-wise AND."""
add = _typed(_add)
"""Lane-wise 64-bit add."""
popcount = _typed(_popcount)
"""Popcount of a uint64 or of each lane (``llvm.ctpop``): POPCNT, or one VPOPCNTQ for a
vector where the CPU has AVX-512 VPOPCNTDQ."""
vector4 = _typed(_vector4)
"""A U64x4 of four uint64 values."""
element = _typed(_element)
"""``array[row, column]`` of a 2-D uint64 array, unchecked."""
element_at = _typed(_element_at)
"""``array[index]`` of a 1-D uint64 array, unchecked."""
add_bytes = _typed(_add_bytes)
"""Byte-wise add of two U64x4 (VPADDB): 32 byte counters that must not pass 255."""
nibble_popcount = _typed(_nibble_popcount)
"""AVX2 only. Popcount of each byte's low nibble (VPSHUFB on a 16-entry table); each byte's
high nibble must be zero."""
sum_bytes = _typed(_sum_bytes)
"""AVX2 only. Each 64-bit lane's eight bytes summed into that lane (VPSADBW against zero)."""
lane = _typed(_lane)
"""Lane ``index`` of a vector, as uint64."""
any_at_least = _typed(_any_at_least)
"""Whether any lane, read as a signed 64-bit value, is >= ``floor``."""
may_reach = _typed(_may_reach)
"""Whether any lane can still reach ``floor``: ``partial + rest_right >= floor`` and
``partial + rest_left >= floor`` (signed), i.e. ``partial + min(rest_left, rest_right)``."""
