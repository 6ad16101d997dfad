"""The ``blend`` engine (CacheBlend V3, wire-compatible with upstream 0.5.6).

Every operation of the default engine, with ``store`` wrapped to fingerprint
what it stored, plus the blend operations:

* ``cb_protocol_handshake``: ``(1, client_version == 1)``;
* ``cb_register_rope`` / ``cb_unregister_rope``: the worker's RoPE state
  (:mod:`~lmcache_engine_blend.registration`);
* ``cb_unified_lookup``: prefix + fingerprint + sparse legs
  (:mod:`~lmcache_engine_blend.unified_lookup`), and with
  ``--enable-segmented-prefix`` the chunks past a gap of the prefix;
* ``cb_retrieve_pre_computed``: the reused chunks' KV written into the worker's
  paged cache, K re-rotated (:mod:`~lmcache_engine_blend.retrieve`), on CPU
  through ``cpu_shm`` caches, on GPU through the worker's CUDA stream
  (:mod:`~lmcache_engine_blend.device_retrieve`);
* ``cb_reorder_plan``: with ``--enable-blend-reorder`` a reordering of the
  prompt that starts with a stored one (:mod:`~lmcache_engine_blend.reorder`),
  else ``[]`` ("keep the prompt"), as upstream answers without the flag.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmcache_engine_default.engine import DefaultEngine

from lmcache_core.engine import EngineContext, Handler
from lmcache_core.protocol.errors import BadRequestError
from lmcache_core.protocol.types import WireCacheKey
from lmcache_engine_blend.events import BlendEvents
from lmcache_engine_blend.fingerprint import FingerprintIndex
from lmcache_engine_blend.fingerprinting_store import FingerprintingStore, decode_tokens
from lmcache_engine_blend.registration import RopeRegistry
from lmcache_engine_blend.reorder import PromptStore, plan
from lmcache_engine_blend.retrieve import BlendRetrieves
from lmcache_engine_blend.settings import BlendEngineSettings
from lmcache_engine_blend.unified_lookup import UnifiedLookupHandler, UnifiedLookups

if TYPE_CHECKING:
    from lmcache_core.engine.contract import RequestContext
    from lmcache_core.engine.sessions import Session

PROTOCOL_VERSION = 1
"""The blend protocol version upstream 0.5.6 speaks."""


class BlendEngine(DefaultEngine):
    """The default engine plus CacheBlend's fingerprint reuse.

    Args:
        context: What the core provides.
    """

    needs_tokens = True  # it fingerprints token content: hash-only lookups are refused

    def __init__(self, context: EngineContext) -> None:
        settings = context.config.plugin_settings(BlendEngineSettings)
        super().__init__(context)
        self.blend_events = BlendEvents(context.events)
        self.index = FingerprintIndex(self.chunk_size, dedup_content=settings.enable_dedup_content)
        self.ropes = RopeRegistry(
            lambda instance_id: self.workers.lmcache_driven(instance_id) is not None,
            self.workers.cuda.get,
        )
        self.prompts = PromptStore(self.chunk_size) if settings.enable_blend_reorder else None
        self.fingerprinting = FingerprintingStore(
            self.lmcache_driven.store,
            self.index,
            self.l1,
            self.lookups.chunk_keys,
            self.lookups.sessions,
            self.blend_events,
            self.prompts,
        )
        self.unified = UnifiedLookups(
            lookups=self.lookups,
            index=self.index,
            l1=self.l1,
            l2=self.l2,
            prefetch_pool=self.prefetch_pool,
            object_nbytes=self._object_nbytes,
            events=self.blend_events,
            job_ttl_s=context.config.mp.session_ttl_seconds,
            segmented=context.config.mp.enable_segmented_prefix,
        )
        self.retrieves = BlendRetrieves(
            workers=self.workers,
            ropes=self.ropes,
            lookups=self.lookups,
            unified=self.unified,
            l1=self.l1,
            chunk_size=self.chunk_size,
            events=self.blend_events,
        )
        self.lookups.sessions.add_end_listener(self._session_ended)

    def _session_ended(self, session: Session, _reason: str) -> None:
        """Forget a request's blend state when its session ends (its locks went with it)."""
        self.unified.forget(session.request_id)
        self.retrieves.forget(session.request_id)

    # -- engine contract -------------------------------------------------------------------

    def handlers(self) -> dict[str, Handler]:
        """The default engine's operations (``store`` fingerprinting) and the blend ones."""
        table = super().handlers()
        table.update(
            {
                "store": self.fingerprinting.store,
                "unregister_kv_cache": self.unregister_kv_cache,
                "cb_protocol_handshake": self.cb_protocol_handshake,
                "cb_register_rope": self.cb_register_rope,
                "cb_unregister_rope": self.cb_unregister_rope,
                "cb_unified_lookup": UnifiedLookupHandler(self.unified),
                "cb_retrieve_pre_computed": self.retrieves.cb_retrieve_pre_computed,
                "cb_reorder_plan": self.cb_reorder_plan,
            }
        )
        return table

    def status(self) -> dict[str, Any]:
        """The default engine's status, plus the blend state."""
        status = super().status()
        status["blend"] = {
            "fingerprints": self.index.status(),
            "registered_cb_rope_instances": self.ropes.ids(),
            "active_cb_lookups": len(self.unified),
            "expired_cb_lookups": self.unified.expired_jobs,
            "prompt_cache": self.unified.prompts.status(),
            "retrieved_chunks": self.retrieves.written_chunks,
            "reorder": self.prompts.status() if self.prompts is not None else None,
        }
        return status

    # -- small operations ---------------------------------------------------------------------

    def cb_protocol_handshake(self, _ctx: RequestContext, client_version: int) -> tuple[int, bool]:
        """``(server version, compatible)``."""
        return PROTOCOL_VERSION, client_version == PROTOCOL_VERSION

    def cb_register_rope(
        self,
        _ctx: RequestContext,
        instance_id: int,
        cos_sin_caches_ipc: list[Any],
        head_size: int,
        is_neox_style: bool,
        group_to_cache: list[int],
        group_rot: list[list[int]],
        group_head_size: list[int],
        kv_quant: str,
    ) -> None:
        """Record (or replace) the worker's RoPE state."""
        self.ropes.register(
            instance_id,
            cos_sin_caches_ipc,
            head_size,
            is_neox_style,
            group_to_cache,
            group_rot,
            group_head_size,
            kv_quant,
        )

    def cb_unregister_rope(self, _ctx: RequestContext, instance_id: int) -> None:
        """Drop the worker's RoPE state (an unknown id is not an error)."""
        self.ropes.drop(instance_id)

    def unregister_kv_cache(self, ctx: RequestContext, instance_id: int) -> None:
        """The default unregistration; the RoPE state goes with the KV cache."""
        self.lmcache_driven.unregister_kv_cache(ctx, instance_id)
        self.ropes.drop(instance_id)
        self.retrieves.device.forget(instance_id)

    def cb_reorder_plan(
        self, _ctx: RequestContext, key: WireCacheKey, keep_prefix: int, budget_ms: int
    ) -> list[int]:
        """The prompt reordered to start with a stored one, or ``[]``: keep it.

        ``[]`` also when the planner is off (as upstream without the flag), when
        the key's namespace does not name exactly one recorded namespace, and for
        a zero budget. The whole token list is planned (``start``/``end`` are not
        a window of a prompt to reorder).

        Raises:
            BadRequestError: A negative ``keep_prefix`` or ``budget_ms``, or
                tokens that are not a list of uint32.
        """
        if keep_prefix < 0 or budget_ms < 0:
            raise BadRequestError("cb_reorder_plan needs keep_prefix >= 0 and budget_ms >= 0")
        if self.prompts is None or budget_ms == 0:
            return []
        raw = bytes(key.token_ids)
        try:
            tokens = decode_tokens(raw)
            own = self.lookups.chunk_keys.tokens.hashes(raw, len(tokens) // self.chunk_size)
        except ValueError as exc:  # decode_tokens' and the hasher's bad-token error
            raise BadRequestError(f"token_ids: {exc}") from None
        namespace = self.prompts.resolve(key.model_name, key.world_size, key.cache_salt)
        if namespace is None:
            return []
        return plan(
            self.prompts, self.index, namespace, tokens.tolist(), own, keep_prefix, budget_ms
        )

    def _reap(self, instance_id: int) -> None:
        super()._reap(instance_id)
        self.ropes.drop(instance_id)
        self.retrieves.device.forget(instance_id)


def build_engine(context: EngineContext) -> BlendEngine:
    """The ``blend`` engine's factory."""
    return BlendEngine(context)
