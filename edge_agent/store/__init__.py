"""The device database and its group-committing writer."""

from edge_agent.store.db import Store
from edge_agent.store.merge import Prepared
from edge_agent.store.writer import GroupCommitter

__all__ = ["GroupCommitter", "Prepared", "Store"]
