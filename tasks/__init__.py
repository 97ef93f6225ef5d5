"""Task registry; importing this package registers every task."""

from tasks import cartpole, classification, mnist_generation, noisy_quadratic, regression, resnet, rosenbrock  # noqa: F401  (registration side effects)
from tasks.registry import get, names, register

__all__ = ["get", "names", "register"]
