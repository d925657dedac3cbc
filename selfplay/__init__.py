"""selfplay: online self-play preference alignment with RePO."""
__version__ = "0.1.0"
