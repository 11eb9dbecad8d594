"""ekd: knowledge distillation for deep face recognition.

Layers (imports flow downward only): cli -> lit -> distill / eval / heads -> data / models -> dist.
"""

__version__ = "0.1.0"
