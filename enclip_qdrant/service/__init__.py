"""The query service (`enclip-qdrant serve`): the loaded bundle behind an HTTP API and a search page."""

from .app import ServeOptions, create_app, serve, startup_warnings
from .batching import BatchingEncoder, MicroBatcher, Overloaded

__all__ = ["BatchingEncoder", "MicroBatcher", "Overloaded", "ServeOptions", "create_app", "serve",
           "startup_warnings"]
