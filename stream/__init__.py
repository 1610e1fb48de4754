"""vidnarrate: real-time video stream analysis with rolling dense captions."""
