"""The wire protocol of the MP server: upstream LMCache 0.5.6 compatible.

ZeroMQ multipart messages, one msgspec MessagePack frame per argument; the op
table, struct encodings and device-handle Ext types are upstream's. Our addition
is the error reply (:mod:`lmcache_core.protocol.errors`): every request is
answered.
"""
