"""The KV event stream: a bounded replay log of cache changes that routers subscribe to.

``subscribe_kv_events`` (upstream 0.5.6's streamed operation) sends
:class:`~lmcache_core.protocol.kv_event_records.KVEventBatch` records: every chunk stored
into or removed from a tier, L1 (``medium`` ``CPU``) and each L2 adapter, with
its block hash, parent hash and token ids. See ``docs/kv-events.md``.
"""
