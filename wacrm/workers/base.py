"""What the server runs in the background: a worker loops until asked to stop."""

from __future__ import annotations

import asyncio
from typing import Protocol


class Worker(Protocol):
    name: str

    async def run(self, stop: asyncio.Event) -> None:
        """Loop until ``stop`` is set; never raise for bad data (quarantine it instead)."""
        ...

    def wake(self) -> None:
        """New work is committed: look now rather than at the next poll."""
        ...
