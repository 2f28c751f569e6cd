"""mapex-serve: serve pruned MAPEX specialists behind one HTTP API.

The service itself lands with the service issue; today the package holds what every part shares:
the band vocabulary (``mapex_serve.bands``) and the errors (``mapex_serve.errors``).
"""

__version__ = "0.1.0"
