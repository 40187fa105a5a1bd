"""The data contract shared by games and the world model: recordings, action spaces, action logs, video, errors."""
