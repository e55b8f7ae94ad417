"""Shared neural-network layers: norms, rotary embeddings, MLP, attention (+ masks), causal convolution."""
