"""The client core: connection, protocol state, commands and event wording, with no UI.

Nothing here imports Textual: the full-screen app and `--plain` are two front ends over it.
"""
