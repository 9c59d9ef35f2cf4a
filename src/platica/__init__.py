"""Plática: answers WhatsApp and SMS conversations automatically with an LLM, through Twilio."""

from platica.app import create_app, lifespan

__all__ = ["create_app", "lifespan"]
__version__ = "0.1.0"
