"""vistok: images and video as tokens, and sequence models over those tokens.

Systems: MAGVIT-v2 (causal 3-D CNN tokenizer with lookup-free quantization), LVM (visual sentences),
Chat-UniVi (dynamic visual tokens), Transfusion (text + diffusion in one transformer) and DiGIT
(discriminative k-means tokens). See the README for a tour.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
