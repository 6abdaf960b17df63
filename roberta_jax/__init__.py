"""roberta_jax: RoBERTa in JAX/Flax."""
