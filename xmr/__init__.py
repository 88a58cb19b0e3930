"""xmr: ranking-loss cross-modal retrieval on frozen CLIP embeddings (Lightning + Hydra)."""

__version__ = "0.1.0"
