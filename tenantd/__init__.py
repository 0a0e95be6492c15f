"""tenantd: a multi-tenant scheduler daemon for edge AI accelerators.

Importing this package is cheap and never imports a vendor runtime; see ``tenantd.runtimes``.
"""

__version__ = "0.1.0"
