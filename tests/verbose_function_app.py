"""`function_app` with every logger at DEBUG, served by a dev host as `tests.verbose_function_app`.

At DEBUG the SDKs log what a production log level hides (websockets: each handshake header, the
bearer token or API key included), so a host serving this app shows whether redaction holds.
"""

import logging

from function_app import app

logging.getLogger().setLevel(logging.DEBUG)

__all__ = ["app"]
