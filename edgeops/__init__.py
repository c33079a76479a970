"""EdgeOps: package, push and watch ML models on fleets of small devices over MQTT."""

__version__ = "0.1.0"
