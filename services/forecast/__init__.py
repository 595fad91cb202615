"""Forecast domain (NHITS): training jobs in a worker process, a versioned model registry,
walk-forward evaluation, calendar-aware forecasts with conformal intervals, retraining automation.

Plain Python, no gRPC: the servicer wraps `services.forecast.service.ForecastDomain`. Kept free of
imports so that the training worker can set its thread budget before numpy/torch load.
"""
