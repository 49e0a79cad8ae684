"""PyTorch references: the definition of correct, the test oracles and the portable fallback."""
