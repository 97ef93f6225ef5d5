"""The orthogonalized family against papers/orthogonal.md §8, torch.optim.Muon and torch.optim.AdamW, and the
routing of parameters between the matrix rule and AdamW."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import optimizers
from optimizers import routing
from optimizers.newton_schulz import zeropower
from optimizers.orthogonal import (
    ROOT,
    AuON,
    HybridAuON,
    Muon,
    NorMuon,
    SinkGD,
    auon_divisor,
    root_clip,
    row_quantile,
    sinkhorn_normalize,
)


def gaussian(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def update_of(cls, grads, weight=None, **kwargs):
    """Apply ``cls`` to one matrix with the given gradient sequence; return -(change)/lr of the last step."""
    w = (weight if weight is not None else torch.zeros_like(grads[0])).clone().requires_grad_(True)
    opt = cls([w], **kwargs)
    before = w.detach().clone()
    for g in grads:
        before = w.detach().clone()
        w.grad = g.clone()
        opt.step()
    return (before - w.detach()) / opt.param_groups[0]["lr"]


def singular_values(x: torch.Tensor) -> torch.Tensor:
    """Singular values through the eigenvalues of the small Gram matrix (much cheaper than an SVD)."""
    x = x.double()
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()


def test_newton_schulz_five_steps_singular_value_band():
    g = gaussian(256, 1024, dtype=torch.float32)
    for x in (g, g.T):
        s = singular_values(zeropower(x, steps=5, dtype=torch.float32))
        assert 0.68 <= s.min() and s.max() <= 1.14, f"expected singular values in [0.68, 1.14], got {s.aminmax()}"
    s = singular_values(zeropower(g[:128, :512], steps=5, dtype=torch.bfloat16))  # bf16 blurs by ~1%
    assert 0.67 <= s.min() and s.max() <= 1.15, f"bf16: expected [0.67, 1.15], got [{s.min()}, {s.max()}]"
    s1 = singular_values(zeropower(g, steps=1, dtype=torch.float32))
    assert s1.max() < 0.4, f"one step should leave singular values near [0.11, 0.32], got max {s1.max()}"


def test_batched_newton_schulz_equals_one_at_a_time():
    stack = gaussian(3, 24, 40, dtype=torch.float32)
    batched = zeropower(stack, dtype=torch.float32)
    for i in range(3):
        single = zeropower(stack[i], dtype=torch.float32)
        diff = (batched[i] - single).abs().max()
        assert torch.allclose(batched[i], single, atol=1e-5), f"matrix {i}: expected equal, max diff {diff}"


@settings(max_examples=15, deadline=None)
@given(scale=st.floats(1e-3, 1e3), shape=st.sampled_from([(8, 8), (12, 5), (6, 20)]), seed=st.integers(0, 99))
def test_muon_auon_sinkgd_are_scale_invariant(scale, shape, seed):
    g = gaussian(*shape, seed=seed, dtype=torch.float32)
    for cls, kwargs in ((Muon, {"ns_bf16": False, "torch_2d": False}), (AuON, {}), (SinkGD, {})):
        base = update_of(cls, [g], **kwargs)
        scaled = update_of(cls, [g * scale], **kwargs)
        assert torch.allclose(base, scaled, rtol=1e-3, atol=1e-5), \
            f"{cls.__name__}: update changed under G -> {scale} G beyond eps (max diff {(base - scaled).abs().max()})"


def test_muon_ema_and_classical_momentum_give_the_same_update():
    grads = [1000 * gaussian(16, 24, seed=s, dtype=torch.float32) for s in range(4)]
    ema = update_of(Muon, grads, ema=True, ns_bf16=False, torch_2d=False)
    classical = update_of(Muon, grads, ema=False, ns_bf16=False, torch_2d=False)
    assert torch.allclose(ema, classical, atol=1e-5), f"max diff {(ema - classical).abs().max()}"


def test_muon_matches_torch_muon_on_matrices_and_flattens_conv_filters():
    grads = [gaussian(48, 20, seed=s, dtype=torch.float32) for s in range(3)]
    w0 = gaussian(48, 20, seed=9, dtype=torch.float32)
    ref = w0.clone().requires_grad_(True)
    torch_opt = torch.optim.Muon([ref], lr=0.02, weight_decay=0.1, momentum=0.95)
    for g in grads:
        ref.grad = g.clone()
        torch_opt.step()
    for torch_2d in (True, False):
        ours = w0.clone().requires_grad_(True)
        opt = Muon([ours], lr=0.02, weight_decay=0.1, torch_2d=torch_2d)
        for g in grads:
            ours.grad = g.clone()
            opt.step()
        assert torch.allclose(ours, ref, atol=1e-6 if torch_2d else 1e-3), \
            f"torch_2d={torch_2d}: max diff to torch.optim.Muon {(ours - ref).abs().max()}"
    conv = gaussian(6, 3, 3, 3, seed=1, dtype=torch.float32)
    flat = update_of(Muon, [conv.reshape(6, 27)], ns_bf16=False, torch_2d=False)
    filt = update_of(Muon, [conv], ns_bf16=False, torch_2d=False)
    assert torch.allclose(filt.reshape(6, 27), flat, atol=1e-6), "a conv filter must update as its (out, in*k*k) matrix"


def test_normuon_rows_have_equal_norm_at_step_one():
    g = gaussian(32, 64, dtype=torch.float32) * torch.logspace(-2, 2, 32, dtype=torch.float32)[:, None]
    update = update_of(NorMuon, [g], ns_bf16=False)
    rows = update.norm(dim=1)
    o = zeropower(g, steps=5, dtype=torch.float32)
    expected = o.norm() / math.sqrt(32)  # shape factor is 1 for a wide matrix
    assert torch.allclose(rows, expected.expand_as(rows), rtol=1e-4), \
        f"expected every row norm {expected:.6f}, got [{rows.min():.6f}, {rows.max():.6f}]"
    assert torch.isclose(update.norm(), o.norm(), rtol=1e-4), "the norm-preserving rescale must keep ||O||_F"


def test_sinkgd_update_has_unit_rms_and_balanced_rows():
    g = gaussian(256, 1024, dtype=torch.float32)
    update = update_of(SinkGD, [g])
    rms = update.square().mean().sqrt()
    assert torch.isclose(rms, torch.tensor(1.0), atol=1e-5), f"expected entry RMS 1, got {rms}"
    cols = update.norm(dim=0) / math.sqrt(256)
    rows = sinkhorn_normalize(g, 5).norm(dim=1) / math.sqrt(1024)
    assert torch.allclose(cols, torch.ones_like(cols), atol=1e-5), "column norms must be sqrt(m) exactly"
    assert 0.9999 <= rows.min() and rows.max() <= 1.0001, f"row norms/sqrt(n) after L=5: [{rows.min()}, {rows.max()}]"
    rows1 = sinkhorn_normalize(g, 1).norm(dim=1) / math.sqrt(1024)
    assert 0.99 <= rows1.min() and rows1.max() <= 1.01, f"after L=1: [{rows1.min()}, {rows1.max()}]"


def test_auon_divisor_is_one_plus_half_over_n():
    x = gaussian(64, 64)
    x = x / x.norm()
    n = x.numel()
    r = auon_divisor(x).item()
    assert math.isclose(r, 1 + 1 / (2 * n), rel_tol=2e-6), f"expected ~{1 + 1 / (2 * n):.7f}, got {r:.7f}"
    assert math.cosh(1 / math.sqrt(n)) ** 2 <= r**2 <= 1 + 1.3811 / n, "r^2 must lie in [cosh^2(1/sqrt N), 1+1.3811/N]"
    repo = auon_divisor(x, 1.5).item()
    assert math.isclose(repo, 1.000275, abs_tol=5e-6), f"repo variant (gamma 1.5): expected 1.000275, got {repo}"
    g = gaussian(64, 64, dtype=torch.float32)
    paper = update_of(AuON, [g], momentum=0.0)
    assert math.isclose(paper.norm().item(), 1 / (1 + 1 / (2 * n)), rel_tol=1e-5), "paper AuON: ||U||_F = 1/r"
    repo_update = update_of(AuON, [g], momentum=0.0, repo_variant=True)
    assert torch.allclose(repo_update, g / 1.000275, rtol=1e-5), "repo AuON: the raw momentum divided by r"


def test_hybrid_auon_takes_one_newton_schulz_step():
    g = gaussian(16, 32, dtype=torch.float32)
    x1 = zeropower(g, steps=1, dtype=torch.float32)
    expected = x1 / (auon_divisor(x1) + 1e-8)
    got = update_of(HybridAuON, [g], momentum=0.0, ns_bf16=False)
    assert torch.allclose(got, expected, atol=1e-6), f"max diff {(got - expected).abs().max()}"


def test_root_clips_at_the_quantile_and_falls_back_to_muon_coefficients():
    u = gaussian(40, 50, dtype=torch.float32)[None]
    assert torch.allclose(row_quantile(u.abs().flatten(1), 0.9), torch.quantile(u.abs().flatten(1), 0.9, dim=1)), \
        "row_quantile must equal torch.quantile (linear interpolation)"
    clipped = root_clip(u, 0.9)
    bound = torch.quantile(u.abs().flatten(), 0.9) + 1e-9
    assert torch.isclose(clipped.abs().max(), bound), f"max |B| should be the 0.9-quantile {bound}"
    fraction = (u.abs() > bound).float().mean().item()
    assert 0.09 <= fraction <= 0.11, f"about 10% of entries are clipped, got {fraction:.3f}"
    got = update_of(ROOT, [u[0]], momentum=0.0, weight_decay=0.0, ns_bf16=False)
    expected = zeropower(clipped[0], steps=5, dtype=torch.float32) * 0.2 * math.sqrt(50)
    assert torch.allclose(got, expected, atol=1e-5), "unseen shape: clip, then Muon's Newton-Schulz, then 0.2 sqrt(max)"


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.mid = nn.Conv2d(4, 4, 3)
        self.hidden = nn.Linear(16, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.mid(torch.relu(self.norm(self.stem(x))))
        return self.head(torch.relu(self.hidden(x.mean((2, 3)).repeat(1, 4))))


def test_routing_sends_hidden_matrices_to_the_matrix_rule_and_the_rest_to_adamw():
    net = SmallNet()
    names = [n for n, _ in net.named_parameters()]
    roles = dict(zip(names, routing.roles(list(net.parameters())), strict=True))
    hidden = {n for n, r in roles.items() if r == routing.HIDDEN}
    assert hidden == {"mid.weight", "hidden.weight"}, f"expected mid and hidden weights as matrices, got {hidden}"
    routing.tag_module(net, {"hidden.weight": routing.OTHER, "head.weight": routing.HIDDEN})
    roles = dict(zip(names, routing.roles(list(net.parameters())), strict=True))
    assert {n for n, r in roles.items() if r == routing.HIDDEN} == {"mid.weight", "head.weight"}, "tags override"
    with pytest.raises(ValueError, match="cannot be a hidden matrix"):
        routing.tag(net.head.bias, routing.HIDDEN)
    hp = {"lr": 0.02, "momentum": 0.95, "nesterov": True, "ema": True, "weight_decay": 0.0, "ns_steps": 5,
          "ns_bf16": True, "match_rms": False, "torch_2d": True, "adamw_lr": 3e-4, "adamw_beta1": 0.9,
          "adamw_beta2": 0.95, "adamw_eps": 1e-10, "adamw_weight_decay": 0.0}
    opt = optimizers.build("muon", SmallNet().parameters(), hp)
    matrix, other = opt.param_groups
    assert matrix["matrix"] and matrix["lr"] == 0.02 and len(matrix["params"]) == 2
    assert not other["matrix"] and other["lr"] == 3e-4 and other["betas"] == (0.9, 0.95) and len(other["params"]) == 8
    with pytest.raises(ValueError, match="matrices and conv filters only"):
        Muon([torch.zeros(3, requires_grad=True)])


def test_adamw_group_matches_torch_adamw_and_state_round_trips():
    shapes = [(6, 5), (7,), (4, 3, 3, 3), (6,)]
    params = [gaussian(*shape, seed=i, dtype=torch.float32).requires_grad_(True) for i, shape in enumerate(shapes)]
    adamw = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    twins = [p.detach().clone().requires_grad_(True) for p in params]
    opt = NorMuon([{"params": params[:1]}, {"params": params[1:], "matrix": False, **adamw}], ns_bf16=False)
    ref = torch.optim.AdamW(twins[1:], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    grads = [[gaussian(*shape, seed=10 * step + i, dtype=torch.float32) for i, shape in enumerate(shapes)]
             for step in range(4)]

    def apply(optimizer, tensors, step_grads):
        for t, g in zip(tensors, step_grads, strict=True):
            t.grad = g.clone()
        optimizer.step()

    for step_grads in grads[:3]:
        apply(opt, params, step_grads)
        apply(ref, twins[1:], step_grads[1:])
    for i, (a, b) in enumerate(zip(params[1:], twins[1:], strict=True)):
        assert torch.allclose(a, b, atol=1e-7), f"tensor {i + 1}: AdamW group differs from torch.optim.AdamW"
    clones = [p.detach().clone().requires_grad_(True) for p in params]
    restored = NorMuon([{"params": clones[:1]}, {"params": clones[1:], "matrix": False, **adamw}], ns_bf16=False)
    restored.load_state_dict(copy.deepcopy(opt.state_dict()))  # as a checkpoint on disk: no shared tensors
    apply(opt, params, grads[3])
    apply(restored, clones, grads[3])
    for a, b in zip(params, clones, strict=True):
        assert torch.equal(a, b), "a restored optimizer must continue exactly"


def test_invalid_hyperparameters_name_the_parameter():
    w = [torch.zeros(3, 3, requires_grad=True)]
    for cls, kwargs, name in ((Muon, {"lr": -1}, "learning rate"), (NorMuon, {"beta2": 1.0}, "beta2"),
                              (SinkGD, {"iterations": 0}, "iterations"), (ROOT, {"quantile": 1.5}, "quantile"),
                              (AuON, {"gamma": 0.0}, "gamma"), (Muon, {"momentum": 1.0}, "momentum")):
        with pytest.raises(ValueError, match=name):
            cls(w, **kwargs)
