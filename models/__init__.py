"""Learned scalable image compression with latent-feature reuse and prediction (TF2)."""
