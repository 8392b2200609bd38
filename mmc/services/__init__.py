"""Services: what mmc does, between the HTTP handlers above and the store and brokers below."""
