"""The DeepSpeed trainer and its log-prob computation; the only package that imports DeepSpeed."""
