"""The torch engine: open_clip members, head members and the shared text encoder."""
