"""Channels: the seed's named message lanes. A topic inside a channel picks the handler."""

from __future__ import annotations

import enum


class Channel(enum.StrEnum):
    """Message channels between the processes of a federation."""

    SERVER_MAIN = "server_main"
    """Client-to-server FL messages (task pulls, results)."""
    CLIENT_MAIN = "client_main"
    """Server-to-client FL messages."""
    SERVER_COMMAND = "server_command"
    """Commands to a server job from its parent."""
    CLIENT_COMMAND = "client_command"
    """Commands to a client job from its parent."""
    SERVER_PARENT_LISTENER = "server_parent_listener"
    """Reports from a server job to the server parent."""
    AUX_COMMUNICATION = "aux_communication"
    """Auxiliary messages between any processes."""
    ADMIN = "admin"
    """Requests from an admin (the `fl-core job` commands) to the server parent."""
