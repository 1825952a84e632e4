"""uvicorn's server, minus its habit of re-raising SIGTERM once it has stopped.

That re-raise kills the process before the code after `serve()` runs: the daemon could not
deregister from its tracker or close its iroh endpoint, the tracker could not close its database.
Here SIGINT and SIGTERM only ask the server to stop; the caller's shutdown then runs. A second
server in the same process (`signals=False`) leaves the signals to the first, and is stopped by
its caller.
"""

import asyncio
import contextlib
import signal
from collections.abc import Iterator

import uvicorn


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, signals: bool = True) -> None:
        super().__init__(config)
        self.signals = signals

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if not self.signals:
            yield
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
