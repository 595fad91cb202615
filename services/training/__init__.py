"""What every trained model shares: jobs, the trainer protocol, the worker process, the registry.

Depends only on services.runtime; a model domain brings a `Trainer` (services.training.trainer)."""
