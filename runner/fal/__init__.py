"""fal over HTTP: the queue client, providers and their credentials, retry predicates, downloads, local images."""
