"""Reading and writing images too large for memory."""
