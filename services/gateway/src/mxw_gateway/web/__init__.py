"""The web page served by the gateway (see docs/web.md)."""
