"""Shard: band shards copied from the raw tars (bytes never re-encoded) and the tier manifest."""

from curate.shard.writer import ShardConfig, write_tiers

__all__ = ["ShardConfig", "write_tiers"]
