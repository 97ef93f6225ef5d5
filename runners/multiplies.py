"""Count multiplies at the aten level: forward, backward and optimizer step alike.

DESIGN.md, "Multiplies": multiplies are counted, not guessed. :class:`MultiplyCounter` is a
``TorchDispatchMode``, so it sees the aten ops that actually run below autograd (backward ops and
``torch.func`` transforms included) and prices each one from its tensor shapes. "Multiplies" means
multiplications and divisions, as the AMOLF thesis (arXiv 2406.06583, eqs. 3.32-3.38) counts them.

Rules (``n`` = output elements, broadcasting included; ``_foreach_*`` ops sum over their tensor list;
in-place and ``out=`` variants cost the same as the plain op and are seen once):

* matmul: ``mm``/``bmm``/``mv``/``dot``/``vdot``/``_scaled_mm`` cost ``n * K`` (K = contracted size),
  i.e. M*K*N, B*M*K*N, M*N, N. ``addmm``/``addmv``/``baddbmm``/``_addmm_activation`` add nothing for
  the bias add. ``addr`` (outer product) costs ``n``.
* coefficients: a scalar ``alpha``/``beta``/``value`` that is not 0 or 1 costs one multiply per
  element it scales (``add(x, y, alpha=-lr)`` costs n, ``addmm(beta=2)`` costs M*N extra). A tensor
  coefficient is assumed to be neither 0 nor 1.
* convolution: forward ``out.numel() * C_in/groups * prod(kernel)`` (the input numel for transposed
  convolutions); ``convolution_backward`` charges the forward count once for grad_input and once for
  grad_weight, each only when ``output_mask`` asks for it; the bias gradient is a sum (free).
* elementwise: ``mul``, ``div``, ``reciprocal``, ``rsqrt``, ``lerp`` cost n (a division counts, a
  square root does not); ``addcmul``/``addcdiv`` cost n for the product/quotient, plus n for a
  ``value``/``scalars`` other than 0/1 (Adam's ``addcdiv(p, m, d, value=-step)`` costs 2n);
  ``mean`` costs one division per output; ``pow`` by a scalar mirrors torch's kernel: exponent
  2 -> 1, 3 -> 2, -1 -> 1, -2 -> 2, -0.5 -> 1 per element, any other exponent is a transcendental
  ``std::pow`` (0).
  ``add``/``sub``/``sum``/``sqrt``/comparisons cost 0 beyond coefficients.
* transcendental functions (exp, log, tanh, sigmoid, softmax, log_softmax, atan, ...) cost 0, but the
  polynomial backward formulas cost their products: ``sigmoid_backward`` g*y*(1-y) and
  ``tanh_backward`` g*(1-y^2) 2n, ``_softmax_backward_data`` y*(g-sum(g*y)) 2n,
  ``_log_softmax_backward_data`` g-exp(y)*sum(g) n. ``mse_loss`` costs one square per input element
  (+1 division for the mean), ``mse_loss_backward`` 2 per element. L2 norms (``linalg_vector_norm``,
  ``_foreach_norm`` with ord 2) cost one square per input element; other orders cost 0.
* linear algebra, per matrix of order n (times the batch), with the standard counts: Cholesky n^3/3,
  LU 2n^3/3, a solve with a factored matrix n^2 per right-hand side (two triangular solves), a single
  triangular solve n^2/2 per right-hand side; ``linalg_solve`` = LU + solve, ``linalg_inv`` = LU + n
  right-hand sides, ``cholesky_inverse`` n^3. Cholesky + n^2 per right-hand side is the leading term of
  the thesis's OLS count (eq. 3.32: N_u(N_u+1)[M + (2N_u+1)/6 + ...]).
* ops on integer or bool tensors cost 0.

Ops that do carry multiplies but have no rule here (other linalg factorizations, normalization
layers, fused optimizer kernels) are not guessed: they are listed in ``MultiplyCounter.uncounted``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["MultiplyCounter", "count_multiplies"]

aten = torch.ops.aten


class _Call(NamedTuple):
    func: torch._ops.OpOverload
    args: tuple
    kwargs: dict
    out: Any

    def arg(self, name: str, default: Any = None) -> Any:
        """An argument by schema name, wherever it was passed."""
        if name in self.kwargs:
            return self.kwargs[name]
        for i, a in enumerate(self.func._schema.arguments):
            if a.name == name:
                return self.args[i] if i < len(self.args) else default
        return default


def _numel(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel()
    return sum(t.numel() for t in x if isinstance(t, torch.Tensor)) if isinstance(x, (list, tuple)) else 0


def _elems(c: _Call) -> int:
    """Output elements; in-place ``_foreach_*`` ops return None, so their ``self`` list is used."""
    return _numel(c.out if isinstance(c.out, torch.Tensor) else c.args[0])


def _weighted(c: _Call, w: Any) -> int:
    """``w`` multiplies per element; a per-tensor list for ``_foreach_*`` ScalarList overloads."""
    if isinstance(w, (list, tuple)):
        return sum(k * t.numel() for t, k in zip(c.args[0], w, strict=True))
    return w * _elems(c)


def _coef_cost(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_coef_cost(x) for x in v]
    return int(isinstance(v, torch.Tensor) or v not in (0, 1))


def _coefs(*names: str) -> Callable[[_Call], int]:
    return lambda c: sum(_weighted(c, _coef_cost(c.arg(n, 1))) for n in names)


def _per_elem(k: int, *coefs: str) -> Callable[[_Call], int]:
    scaled = _coefs(*coefs)
    return lambda c: k * _elems(c) + scaled(c)


def _contract(i: int, *coefs: str) -> Callable[[_Call], int]:
    """Matmul family: output elements times the contracted size of operand ``i``."""
    scaled = _coefs(*coefs)
    return lambda c: _elems(c) * c.args[i].shape[-1] + scaled(c)


_POW = {2: 1, 3: 2, -1: 1, -2: 2, -0.5: 1}


def _pow(c: _Call) -> int:
    e = c.arg("exponent")
    if isinstance(e, (list, tuple)):
        return _weighted(c, [_POW.get(x, 0) if isinstance(x, (int, float)) else 0 for x in e])
    return _POW.get(e, 0) * _elems(c) if isinstance(e, (int, float)) else 0


def _l2(c: _Call) -> int:
    return _numel(c.args[0]) if c.arg("ord", 2) == 2 else 0


def _conv_fwd(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, transposed: bool) -> int:
    return (x if transposed else out).numel() * math.prod(w.shape[1:])


def _conv_bwd(c: _Call) -> int:
    grad_out, x, w = c.args[:3]
    mask = c.arg("output_mask")
    return _conv_fwd(x, w, grad_out, c.arg("transposed")) * (int(mask[0]) + int(mask[1]))


def _order(a: torch.Tensor) -> tuple[int, int]:
    """(batch, n) of a (batch of) square matrices."""
    return math.prod(a.shape[:-2]), a.shape[-1]


def _factor(num: int, den: int) -> Callable[[_Call], int]:
    """``num/den * n^3`` per matrix in the first argument."""

    def cost(c: _Call) -> int:
        b, n = _order(c.args[0])
        return b * num * n**3 // den

    return cost


def _rhs(b_arg: int, a_arg: int, per_rhs_half_n2: int) -> Callable[[_Call], int]:
    """``per_rhs_half_n2 * n^2/2`` per right-hand side; B.numel()/n right-hand sides."""
    return lambda c: _numel(c.args[b_arg]) * c.args[a_arg].shape[-1] * per_rhs_half_n2 // 2


def _solve(c: _Call) -> int:
    return _factor(2, 3)(c) + _rhs(1, 0, 2)(c)


def _inv(c: _Call) -> int:
    b, n = _order(c.args[0])
    return b * (2 * n**3 // 3 + n**3)


def _table() -> dict[Any, Callable[[_Call], int]]:
    rules: dict[tuple[str, ...], Callable[[_Call], int]] = {
        ("mm", "bmm", "mv", "dot", "vdot", "_scaled_mm"): _contract(0),
        ("addmm", "addmv", "baddbmm", "_addmm_activation"): _contract(1, "beta", "alpha"),
        ("addr",): _per_elem(1, "beta", "alpha"),
        ("mul", "div", "reciprocal", "rsqrt", "lerp", "mean"): _per_elem(1),
        ("add", "sub"): _coefs("alpha"),
        ("addcmul", "addcdiv"): _per_elem(1, "value", "scalars"),
        ("pow",): _pow,
        ("_foreach_norm", "linalg_vector_norm"): _l2,
        ("sigmoid_backward", "tanh_backward", "_softmax_backward_data", "mse_loss_backward"): _per_elem(2),
        ("_log_softmax_backward_data",): _per_elem(1),
        ("mse_loss",): lambda c: c.args[0].numel() + int(c.arg("reduction", 1) == 1),
        ("convolution",): lambda c: _conv_fwd(c.args[0], c.args[1], c.out, c.arg("transposed")),
        ("convolution_backward",): _conv_bwd,
        ("linalg_cholesky_ex",): _factor(1, 3),
        ("linalg_lu_factor_ex", "linalg_lu"): _factor(2, 3),
        ("_linalg_solve_ex",): _solve,
        ("linalg_inv_ex",): _inv,
        ("cholesky_inverse",): _factor(1, 1),
        ("cholesky_solve",): _rhs(0, 1, 2),
        ("linalg_lu_solve",): _rhs(2, 0, 2),
        ("linalg_solve_triangular",): _rhs(1, 0, 1),
        ("triangular_solve",): _rhs(0, 1, 1),
    }
    table = {}
    for names, cost in rules.items():
        for name in names:
            for variant in (name, f"{name}_", f"_foreach_{name}", f"_foreach_{name}_"):
                for ns in (aten, torch.ops.prims):
                    packet = getattr(ns, variant, None)
                    if packet is not None:
                        table[packet] = cost
    return table


_COSTS = _table()
# Multiply-bearing ops without a rule: reported in ``uncounted`` instead of guessed.
_UNPRICED = re.compile(r"^(?!_linalg_check_errors)_?linalg_|(batch|layer|group|instance)_norm|^_fused_")


def _tensors(*xs: Any):
    for x in xs:
        for t in x if isinstance(x, (list, tuple)) else (x,):
            if isinstance(t, torch.Tensor):
                yield t


class MultiplyCounter(TorchDispatchMode):
    """Counts multiplies (and divisions) of every aten op run while active; see the module rules.

    ``total`` is the count, ``by_op`` maps op packet names (``"aten.mm"``) to their share and
    ``uncounted`` counts calls of multiply-bearing ops that have no rule.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.by_op: Counter[str] = Counter()
        self.uncounted: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        cost = _COSTS.get(func.overloadpacket)
        if cost is None:
            if _UNPRICED.search(func.overloadpacket.__name__):
                self.uncounted[str(func.overloadpacket)] += 1
            return out
        ref = next(_tensors(out, args[0] if args else None), None)
        if ref is not None and (ref.is_floating_point() or ref.is_complex()):
            n = int(cost(_Call(func, args, kwargs, out)))
            if n:
                self.total += n
                self.by_op[str(func.overloadpacket)] += n
        return out


def count_multiplies(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """Run ``fn(*args, **kwargs)`` under a :class:`MultiplyCounter`; return (result, multiplies)."""
    with MultiplyCounter() as mc:
        result = fn(*args, **kwargs)
    return result, mc.total
