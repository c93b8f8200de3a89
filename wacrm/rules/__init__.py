"""Rule files and the engine that runs them on events and timers."""
