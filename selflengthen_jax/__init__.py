"""selflengthen-jax: Self-Lengthen (arXiv 2410.23933) in JAX/Flax."""

__version__ = "0.1.0"
