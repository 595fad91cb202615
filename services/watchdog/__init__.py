"""Watchdog: health of every service, alert history, Telegram alerts.

Domain code (plain Python) lives in settings/probes/monitor/alerts/telegram/store/service; the
servicer maps `service.WatchdogDomain` to the gRPC contract.
"""
