"""Einsum, in the forms CNN exports use: one operand (transposes, sums, diagonals) or two
(matrix products, batched or not, channel mixing, attention's products), run as one
numpy.matmul into the output buffer; three or more operands run numpy.einsum.

The equation is read once, at load (letters, arity of the terms, ellipses, the output term);
for each set of input shapes ``infer`` binds every label to a size and makes the plan:

- a label repeated within a term takes that operand's diagonal (a view);
- a label in no output is summed out of the operands holding it, unless both hold it with one
  size: then it is contracted by the product;
- the output's labels are split into a prefix P, run as matmul's batch axes (an operand without
  a label gets a size-1 axis, which matmul broadcasts), then M from one operand only and N from
  the other only. The shortest such prefix is taken (the largest matrices); one always exists,
  P = the whole output at worst. The operands, transposed to (P, M, K) and (P, K, N), multiply
  into the output viewed as (P, m, n): it is the output in its own order, with no copy after.

A label's sizes must agree between operands up to broadcasting (size 1 against n), as in NumPy
and ONNX Runtime; every ellipsis stands for the same number of axes (ONNX), broadcast likewise.
"""
from __future__ import annotations

import math
import string

import numpy as np

from .base import Info, Op, register

LETTERS = frozenset(string.ascii_letters)
ELLIPSIS = "..."


def parse_term(term: str) -> list:
    """A term's labels, the ellipsis as one ELLIPSIS entry; ValueError if malformed."""
    labels, k = [], 0
    while k < len(term):
        if term.startswith(ELLIPSIS, k):
            if ELLIPSIS in labels:
                raise ValueError(f"term {term!r} has more than one ellipsis")
            labels.append(ELLIPSIS)
            k += 3
        elif term[k] in LETTERS:
            labels.append(term[k])
            k += 1
        else:
            raise ValueError(f"term {term!r} holds {term[k]!r}: labels are the letters a-z, "
                             f"A-Z, with at most one '...'")
    return labels


def parse_equation(equation: str):
    """(input terms, output term or None when implicit), each a list of labels; ValueError if
    malformed."""
    eq = equation.replace(" ", "")
    if eq.count("->") > 1:
        raise ValueError("more than one '->'")
    lhs, arrow, rhs = eq.partition("->")
    terms = [parse_term(t) for t in lhs.split(",")]
    if not arrow:
        return terms, None
    out = parse_term(rhs)
    if len(set(out)) != len(out):
        raise ValueError(f"output term {rhs!r} repeats a label")
    held = {label for t in terms for label in t}
    missing = [label for label in out if label not in held and label != ELLIPSIS]
    if missing:
        raise ValueError(f"output labels {''.join(missing)!r} are in no input term")
    return terms, out


@register
class Einsum(Op):
    kind = "Einsum"
    n_inputs = (1, None)
    attributes = {"equation": "str"}

    def setup(self, constants):
        equation = self.attr("equation")
        if equation is None:
            raise self.error("attribute 'equation' is required")
        try:
            self.terms, self.out_term = parse_equation(equation)
        except ValueError as e:
            raise self.error(f"equation {equation!r}: {e}") from None
        if self.out_term is None:       # implicit: the ellipsis, then the labels used once
            once = [lb for t in self.terms for lb in t
                    if lb != ELLIPSIS and sum(u.count(lb) for u in self.terms) == 1]
            dots = [ELLIPSIS] if any(ELLIPSIS in t for t in self.terms) else []
            self.out_term = dots + sorted(once)
        # written out for numpy.einsum, whose implicit form is not needed
        self.equation = (",".join("".join(t) for t in self.terms) + "->" +
                         "".join(self.out_term))
        if len(self.terms) != len(self.node.inputs):
            raise self.error(f"equation {equation!r} has {len(self.terms)} input terms for "
                             f"{len(self.node.inputs)} inputs")

    # -- shapes ---------------------------------------------------------------------------------
    def bind(self, ins):
        """Each operand's labels with the ellipsis expanded (its axes labelled 0, 1, ...), the
        output's labels, and every label's size."""
        ranks = [len(x.shape) for x in ins]
        spans = {r - (len(t) - 1) for t, r in zip(self.terms, ranks) if ELLIPSIS in t}
        for t, x in zip(self.terms, ins):
            if ELLIPSIS not in t and len(t) != len(x.shape):
                raise self.error(f"term {''.join(t)!r} labels {len(t)} axes of an input of "
                                 f"shape {x.shape}")
        if len(spans) > 1 or min(spans, default=0) < 0:
            raise self.error(f"the ellipses of {self.equation!r} do not stand for one number of "
                             f"axes in inputs of shapes {[x.shape for x in ins]}")
        e = spans.pop() if spans else 0
        dots = list(range(e))

        def expand(term):
            k = term.index(ELLIPSIS) if ELLIPSIS in term else None
            return term if k is None else term[:k] + dots + term[k + 1:]
        terms = [expand(t) for t in self.terms]
        if e and ELLIPSIS not in self.out_term:
            raise self.error(f"the ellipses of {self.equation!r} stand for {e} axes, which the "
                             f"output term leaves out")
        out = expand(self.out_term)
        sizes = {}
        for t, x in zip(terms, ins):
            seen = {}
            for label, d in zip(t, x.shape):
                if seen.setdefault(label, d) != d:
                    raise self.error(f"label {self._name(label)} is repeated in the term of an "
                                     f"input of shape {x.shape} over axes of sizes "
                                     f"{seen[label]} and {d}")
                if sizes.get(label, 1) not in (1, d) and d != 1:
                    raise self.error(f"label {self._name(label)} has sizes {sizes[label]} and "
                                     f"{d} in inputs of shapes {[x.shape for x in ins]}")
                if d != 1 or label not in sizes:
                    sizes[label] = d
        return terms, out, sizes

    @staticmethod
    def _name(label):
        return f"{label!r}" if isinstance(label, str) else f"'...' (axis {label})"

    def plan_for(self, ins) -> tuple:
        """(output shape, fill(*inputs, out), multiply-adds) for these inputs; checked."""
        if len({x.dtype for x in ins}) != 1 or ins[0].dtype.kind not in "fiu":
            raise self.error(f"inputs must share a number dtype, got "
                             f"{[x.dtype.name for x in ins]}")
        terms, out, sizes = self.bind(ins)
        shape = tuple(sizes[label] for label in out)
        if len(ins) == 1:
            return shape, self._one(terms[0], out, ins[0].shape), 0.0
        if len(ins) == 2:
            return (shape,) + self._two(terms, out, [x.shape for x in ins], sizes)
        return shape, self._many(self.equation), float(math.prod(sizes.values()))

    def infer(self, ins):
        return [Info(self.plan_for(ins)[0], ins[0].dtype)]

    # -- plans ----------------------------------------------------------------------------------
    @staticmethod
    def diagonals(labels, shape):
        """The np.diagonal calls (axis pairs) that leave each label once, and the labels and
        shape after them (np.diagonal moves the diagonal's axis last)."""
        labels, shape, calls = list(labels), list(shape), []
        while len(set(labels)) != len(labels):
            p = next(k for k, lb in enumerate(labels) if labels.count(lb) > 1)
            q = labels.index(labels[p], p + 1)
            calls.append((p, q))
            label, d = labels[p], shape[p]
            for k in (q, p):
                del labels[k], shape[k]
            labels.append(label)
            shape.append(d)
        return calls, labels, shape

    def _one(self, labels, out, shape):
        calls, labels, _ = self.diagonals(labels, shape)
        summed = tuple(k for k, lb in enumerate(labels) if lb not in out)
        kept = [lb for lb in labels if lb in out]
        # the output viewed in the order of the operand's kept axes, summed into directly
        perm = [out.index(lb) for lb in kept]

        def fill(x, y):
            for p, q in calls:
                x = x.diagonal(axis1=p, axis2=q)
            y = y.transpose(perm)
            if summed:
                np.sum(x, axis=summed, dtype=y.dtype, out=y)
            else:
                np.copyto(y, x)
        return fill

    def _two(self, terms, out, shapes, sizes):
        calls, labels, dims = [], [], []
        for t, s in zip(terms, shapes):
            c, lb, d = self.diagonals(t, s)
            calls.append(c)
            labels.append(lb)
            dims.append(dict(zip(lb, d)))
        # summed out before the product: labels of no output that only one operand holds, or
        # that both hold with sizes 1 and n (sum_l a * b_l = a * sum_l b_l)
        contracted = [lb for lb in labels[0] if lb in dims[1] and lb not in out
                      and dims[0][lb] == dims[1][lb]]
        summed = [tuple(k for k, lb in enumerate(lbs) if lb not in out and lb not in contracted)
                  for lbs in labels]
        held = [[lb for lb in lbs if lb in out or lb in contracted] for lbs in labels]
        # the shortest output prefix after which the labels are one operand's, then the other's
        for p in range(len(out) + 1):
            side = [0 if lb in held[0] else 1 for lb in out[p:]]
            if any(lb in held[0] and lb in held[1] for lb in out[p:]):
                continue
            if sum(a != b for a, b in zip(side, side[1:])) <= 1:
                break
        batch = out[:p]
        left = side[0] if side else 0
        rows = [lb for lb in out[p:] if lb in held[left]]
        cols = [lb for lb in out[p:] if lb in held[1 - left]]
        m = math.prod(sizes[lb] for lb in rows)
        n = math.prod(sizes[lb] for lb in cols)
        k = math.prod(sizes[lb] for lb in contracted)
        work = 2.0 * math.prod(sizes[lb] for lb in batch) * m * n * k

        def arrange(x, order, tail):
            """Operand x's plan: the order of its held axes, and its shape as (batch, tail)."""
            lbs, d = held[x], dims[x]
            present = [lb for lb in batch if lb in lbs]
            perm = [lbs.index(lb) for lb in present + order]
            return perm, tuple(d.get(lb, 1) for lb in batch) + tail
        a_perm, a_shape = arrange(left, rows + contracted, (m, k))
        b_perm, b_shape = arrange(1 - left, contracted + cols, (k, n))
        y_shape = tuple(sizes[lb] for lb in batch) + (m, n)
        a_calls, a_sum = calls[left], summed[left]
        b_calls, b_sum = calls[1 - left], summed[1 - left]

        def operand(x, diag, axes, perm, shape):
            for p, q in diag:
                x = x.diagonal(axis1=p, axis2=q)
            if axes:
                x = x.sum(axis=axes, dtype=x.dtype)
            return x.transpose(perm).reshape(shape)

        def fill(x0, x1, y):
            a, b = (x0, x1) if left == 0 else (x1, x0)
            np.matmul(operand(a, a_calls, a_sum, a_perm, a_shape),
                      operand(b, b_calls, b_sum, b_perm, b_shape),
                      out=y.reshape(y_shape, copy=False))
        return fill, work

    @staticmethod
    def _many(equation):
        def fill(*args):
            np.einsum(equation, *args[:-1], out=args[-1], optimize=True)
        return fill

    # -- steps ----------------------------------------------------------------------------------
    def build(self, ins, outs, i, o):
        fill, srcs, b = self.plan_for(ins)[1], list(i), o[0]
        if len(srcs) == 1:
            a = srcs[0]

            def step(env, nt):
                fill(env[a], env[b])
        elif len(srcs) == 2:
            a0, a1 = srcs

            def step(env, nt):
                fill(env[a0], env[a1], env[b])
        else:
            def step(env, nt):
                fill(*[env[k] for k in srcs], env[b])
        return step

    def flops(self, ins, outs):
        return self.plan_for(ins)[2]
