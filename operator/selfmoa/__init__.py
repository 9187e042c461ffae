"""selfmoa: closed-loop safety alignment of small language models with weak supervision."""

__version__ = "0.1.0"
