"""Replay defence for aMCP envelopes: counter windows, Bloom generations, an exact store."""

from amcp.replay.bloom import BloomFilter
from amcp.replay.guard import Check, ReplayGuard, Verdict

__all__ = ["BloomFilter", "Check", "ReplayGuard", "Verdict"]
