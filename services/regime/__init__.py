"""Regime service (HMM market phases + LightGBM signal scoring): features, the HMM with filtered
(forward-only) probabilities and stable state names, triple-barrier labels, a purged walk-forward
scorer and its honest evaluation, and the trainer on the shared machinery (services.training).

The domain modules are plain Python, no gRPC; `servicer.py`, `convert.py` and `app.py` are the gRPC
side. Kept free of imports so that the training worker can set its thread budget before numpy,
hmmlearn and LightGBM load.
"""
