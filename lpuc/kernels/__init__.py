"""numpy kernels: what each operator computes (see registry.py)."""

from lpuc.kernels.registry import KernelContext, get_kernel, kernel, registered_ops, run_kernel

__all__ = ["KernelContext", "get_kernel", "kernel", "registered_ops", "run_kernel"]
