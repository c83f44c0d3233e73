"""The control socket: slirp4netns's JSON API plus read-only queries of our own."""
