"""Tests of the KV event stream: the replay log, the streamed operation, real traffic."""
