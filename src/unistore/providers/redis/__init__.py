"""The Redis provider's parts: its key layout and the Lua scripts that write a shard."""
