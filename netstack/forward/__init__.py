"""Port forwarding: host listeners whose connections and datagrams are carried into
the guest (the slirp4netns API's add_hostfwd)."""
