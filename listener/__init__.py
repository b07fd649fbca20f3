"""The real-time listener: WebSocket log subscription into the durable vote queue."""

from listener.listener import HeadTimeout, Listener
from listener.status import ListenerStatus

__all__ = ["HeadTimeout", "Listener", "ListenerStatus"]
