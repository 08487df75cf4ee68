"""Per-layer entropy models: the contract and registry (base), factorized, hyperprior."""

from models.entropy.base import (EntropyModel, entropy_model_class, make_entropy_model,
                                 register, unregister)

__all__ = ["EntropyModel", "entropy_model_class", "make_entropy_model", "register",
           "unregister"]
