"""Pattern service: a documented catalogue of chart patterns, a rule-based detector over causal
zig-zag pivots, a TCN trained on the detector's labels (tcn.py; its job on the shared training
machinery: trainer.py serving side, training.py worker side), and what followed each pattern
historically against the base rate.

The domain modules are plain Python, no gRPC; `servicer.py`, `convert.py` and `app.py` are the gRPC
side. Every detection, and every pattern in it, names its engine ("rules" or "tcn").
"""
