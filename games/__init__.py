"""Real games and what they share with the world model.

``games.data`` is the data contract (recordings, action spaces, action logs, video, errors) that the world model
reads; it imports no game. ``games.registry`` names the games (``make_game``), ``games.agents`` their scripted
agents (``make_agent``), ``games.record`` records and audits datasets, ``games.probes`` reads a game's state back
from its frames. Nothing here imports pygame or torch, and this package imports nothing when it is imported.
"""
