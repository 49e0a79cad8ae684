"""Public ops: validation, defaults, docstrings and the torch.library autograd boundary."""
