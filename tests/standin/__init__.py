"""Loopback stand-ins for the Anthropic Messages API and ntfy (stdlib only)."""
