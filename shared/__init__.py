"""Code both sides of the chat use: the wire protocol and the display sanitizer."""
