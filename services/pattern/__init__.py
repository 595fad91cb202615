"""Pattern service: a documented catalogue of chart patterns, a rule-based detector over causal
zig-zag pivots, and what followed each pattern historically against the base rate.

The domain modules are plain Python, no gRPC; `servicer.py`, `convert.py` and `app.py` are the gRPC
side. The TCN of issue 12 is not built yet: every detection says its engine is "rules".
"""
