"""Validation experiments for econspin: reproducible scripts that run the engine against known results."""
