"""Inbound media: voice notes, images, documents and locations, fetched and understood."""
