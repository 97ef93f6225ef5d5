"""Task registry; importing this package registers every task."""

from tasks import noisy_quadratic, rosenbrock  # noqa: F401  (registration side effects)
from tasks.registry import get, names, register

__all__ = ["get", "names", "register"]
