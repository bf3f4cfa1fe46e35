"""The control channel: operators' writes reach a running bridge through a unix socket in
the profile directory, so a store always has exactly one writer.

protocol.py (the wire format), registry.py (operations by name, and how to add one),
server.py (the bridge's end), client.py (sessions-admin's end), writes.py (delete, prune,
import, rotate-key: the same code whether the bridge or sessions-admin runs it). Importing
the package registers every operation.
"""

from bridge.control import writes
from bridge.control.registry import OPERATIONS, ControlContext

__all__ = ["OPERATIONS", "ControlContext", "writes"]
