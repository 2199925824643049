"""Attacks for robustness evaluation: PGD-Linf (undefended / purifier-ignoring) and BPDA+EOT (through it)."""

from mimicfast.attacks.bpda_eot import bpda_eot, purifier_fn
from mimicfast.attacks.pgd import pgd_linf

__all__ = ["bpda_eot", "pgd_linf", "purifier_fn"]
