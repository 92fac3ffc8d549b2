"""Generation, output diagnostics and α selection: the thin module on top of the engine.

Submodules that need torch/transformers import them inside; ``diagnostics`` needs neither.
"""
