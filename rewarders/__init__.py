"""Reward plug-ins: the interface, the registry and the built-ins."""
