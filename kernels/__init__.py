"""Triton kernels of mimicfast, installed as ``mimicfast.kernels``.

Importing this package never imports Triton; each kernel module does so itself, so that
``mimicfast`` stays importable where Triton is missing.
"""
