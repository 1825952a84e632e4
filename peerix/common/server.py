"""uvicorn's server, minus its habit of re-raising SIGTERM once it has stopped.

That re-raise kills the process before the code after `serve()` runs: the daemon could not
deregister from its tracker or close its iroh endpoint, the tracker could not close its database.
Here SIGINT and SIGTERM only ask the server to stop; the caller's shutdown then runs.
"""

import asyncio
import contextlib
import signal
from collections.abc import Iterator

import uvicorn


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
