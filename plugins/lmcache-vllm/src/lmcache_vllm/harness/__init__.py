"""Replays vLLM's connector call sequence against a real server, without vLLM.

:mod:`~lmcache_vllm.harness.replay` plays vLLM's scheduler (in the calling process)
and drives :mod:`~lmcache_vllm.harness.worker_process` (a separate process, as vLLM's
workers are). Used by the plugin's tests and benchmarks.
"""
