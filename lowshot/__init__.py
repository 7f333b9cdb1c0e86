"""lowshot: a feature-caching low-shot recognition benchmark harness."""
__version__ = "0.1.0"
