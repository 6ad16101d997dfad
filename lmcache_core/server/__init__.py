"""The server process: start-up checks, component lifecycle and the main loop."""
