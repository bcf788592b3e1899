"""The Textual terminal client and its headless --plain mode."""
