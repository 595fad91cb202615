"""Forecast domain (NHITS): its trainer on the shared training machinery (services.training: jobs,
worker process, registry, retraining), walk-forward evaluation, calendar-aware forecasts with
conformal intervals.

Plain Python, no gRPC: the servicer wraps `services.forecast.service.ForecastDomain`. Kept free of
imports so that the training worker can set its thread budget before numpy/torch load.
"""
