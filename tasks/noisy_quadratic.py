"""LODO's noisy quadratic bowl (papers/lodo.md §3.1)."""

from __future__ import annotations

import math

import torch

from tasks.base import VectorTask
from tasks.registry import register


@register
class NoisyQuadratic(VectorTask):
    """l_t(x) = 1/2 (x - c_t)^T H (x - c_t) with H = U diag(lambda) U^T, lambda geometric from
    ``eig_min`` to ``eig_max``, U the Q factor of a Gaussian matrix drawn from the task seed, and a
    minimum c_t that takes a N(0, noise_std^2 I) random-walk step at every batch. x0 = 0.

    No method can beat sigma^2 tr(H) / 2 in expectation (the next step of the walk is unpredictable);
    Newton attains it. ``facts()`` reports that optimum.
    """

    name = "noisy_quadratic"

    def __init__(
        self,
        seed: int,
        device: torch.device,
        dtype: torch.dtype,
        dim: int = 100,
        noise_std: float = 1.0,
        eig_min: float = 1e-3,
        eig_max: float = 1.0,
        **context,
    ) -> None:
        if dim < 1 or noise_std < 0 or not 0 < eig_min <= eig_max:
            raise ValueError(f"invalid noisy_quadratic options dim={dim} noise_std={noise_std} "
                             f"eig_min={eig_min} eig_max={eig_max}")
        super().__init__(torch.zeros(dim), seed, device, dtype, **context)
        self.noise_std = noise_std
        self.eigenvalues = torch.linspace(
            math.log(eig_min), math.log(eig_max), dim, dtype=dtype, device=device
        ).exp()
        gaussian = torch.randn(dim, dim, generator=self.generator, dtype=dtype, device=device)
        u, _ = torch.linalg.qr(gaussian)
        self.hessian = (u * self.eigenvalues) @ u.T
        self.center = torch.zeros(dim, dtype=dtype, device=device)
        # the metric's probe vectors come from their own stream, so evaluating never changes the batches
        self._probe_generator = torch.Generator(device=device).manual_seed(seed + 1)

    def sample_batch(self) -> torch.Tensor:
        """One random-walk step of the minimum; the batch is the new centre."""
        noise = torch.randn(self.center.shape, generator=self.generator, dtype=self.dtype, device=self.device)
        self.center.add_(noise, alpha=self.noise_std)
        return self.center.clone()

    def flat_loss(self, x: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        d = x - batch
        return 0.5 * d @ (self.hessian @ d)

    def evaluate(self) -> dict[str, float]:
        """With an optimizer that offers ``preconditioner_matvec`` (LODO and its ablations), the
        Hessian-approximation error of papers/lodo.md §1.6: sqrt(mean ||v - G H v||^2) over 100 random
        unit vectors v (an estimate of ||I - G H||_F / sqrt(n)), with the exact, noise-free H."""
        matvec = getattr(getattr(self, "optimizer", None), "preconditioner_matvec", None)
        if matvec is None:
            return {}
        probes = torch.randn(len(self.x), 100, generator=self._probe_generator, dtype=self.dtype, device=self.device)
        probes /= probes.norm(dim=0, keepdim=True)
        residual = probes - matvec(self.hessian @ probes).to(self.dtype)
        return {"hessian_error": float(residual.square().sum(0).mean().sqrt())}

    def facts(self) -> dict[str, float]:
        return {"optimum": self.noise_std**2 * float(self.eigenvalues.sum()) / 2.0}

    def state_dict(self):
        return {**super().state_dict(), "center": self.center.clone(), "probes": self._probe_generator.get_state()}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.center.copy_(state["center"])
        self._probe_generator.set_state(state["probes"])
