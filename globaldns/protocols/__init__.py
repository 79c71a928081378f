"""Thin asyncio protocols: framing, timers and backpressure only; the resolver does the DNS."""
