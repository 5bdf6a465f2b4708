"""FederatedFactory: one-shot federated learning by exchanging class-conditional diffusion factories.

Importing the package is cheap: heavy libraries (torch, diffusers, ...) load in the modules that need them.
"""

__version__ = "0.1.0"
