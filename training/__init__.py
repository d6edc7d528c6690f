"""Training-side code of the SViTT port: data readers, the synthetic dataset, entry points and recipes."""
