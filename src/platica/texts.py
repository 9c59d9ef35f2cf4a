"""The fixed texts customers get (confirmations, help, fallback, busy, offline, handoff) and the
default system prompt: built in, in Spanish and English, unless the channel's config has its own.

A text column of `channel_configs` left NULL (or empty) means "the built-in text in the
channel's `language`", so changing the language changes every text nobody edited. Keywords stay
the ones Twilio recognises (STOP, START), whatever the language.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from platica.models import ChannelConfig

TextName = Literal[
    "system_prompt",
    "opt_out_message",
    "opt_in_message",
    "help_message",
    "fallback_message",
    "offline_message",
    "busy_message",
    "handoff_message",
]
# Every editable text, in the order the API and the dashboard show them.
TEXT_NAMES: Final[tuple[TextName, ...]] = get_args(TextName)
LANGUAGES: Final = ("es", "en")
DEFAULT_LANGUAGE: Final = "es"

BUILT_IN: Final[dict[str, dict[TextName, str]]] = {
    "es": {
        "system_prompt": (
            "Eres un asistente amable y servicial que atiende a los clientes por mensaje de "
            "texto. Sé breve y responde en el idioma del cliente."
        ),
        "opt_out_message": (
            "Listo, ya no recibirás más mensajes. Responde START para volver a suscribirte."
        ),
        "opt_in_message": (
            "Listo, tu suscripción está activa de nuevo. Responde STOP para dejar de recibir "
            "mensajes."
        ),
        "help_message": (
            "Este es un asistente automático: escribe tu pregunta y te responderemos. Responde "
            "STOP para dejar de recibir mensajes."
        ),
        "fallback_message": (
            "Lo sentimos, ahora no podemos responder. Te contestaremos lo antes posible."
        ),
        # Plain ASCII, so the demo reply stays one cheap GSM-7 SMS segment where it can.
        "offline_message": (
            "[Respuesta de prueba, sin IA: configura OPENAI_API_KEY para respuestas reales.]"
        ),
        "busy_message": (
            "Estamos recibiendo muchos mensajes en este momento. Te responderemos lo antes posible."
        ),
        "handoff_message": (
            "Te atenderá una persona de nuestro equipo. Te responderemos en breve."
        ),
    },
    "en": {
        "system_prompt": (
            "You are a helpful, friendly assistant answering customers by text message. Be brief."
        ),
        "opt_out_message": (
            "You have been unsubscribed and will get no more messages. Reply START to resubscribe."
        ),
        "opt_in_message": "You are subscribed again. Reply STOP to unsubscribe.",
        "help_message": ("This is an automated assistant. Reply STOP to stop receiving messages."),
        "fallback_message": "Sorry, we can't answer right now. We'll get back to you soon.",
        "offline_message": "[Demo reply, not AI: set OPENAI_API_KEY for real answers.]",
        "busy_message": (
            "We're getting a lot of messages right now. We'll get back to you as soon as we can."
        ),
        "handoff_message": ("A member of our team will take it from here. We'll reply shortly."),
    },
}

# What the offline responder says after its notice, by language: the customer's words echoed,
# or what it cannot open (by media kind).
OFFLINE_ECHO: Final = {"es": 'Dijiste: "{said}"', "en": 'You said: "{said}"'}
OFFLINE_CANNOT_OPEN: Final = {
    "es": (
        "Recibí tu {what}, pero sin una clave de OpenAI no puedo entender notas de voz, "
        "imágenes ni documentos."
    ),
    "en": (
        "I received your {what}, but I cannot understand voice notes, images or documents "
        "without an OpenAI key."
    ),
}
OFFLINE_MEDIA: Final = {
    "es": {
        "audio": "nota de voz",
        "image": "imagen",
        "document": "documento",
        "other": "archivo adjunto",
    },
    "en": {"audio": "voice note", "image": "image", "document": "document", "other": "attachment"},
}


def language_of(language: str | None) -> str:
    """A supported language: the given one, or Spanish."""
    return language if language in LANGUAGES else DEFAULT_LANGUAGE


def built_in(language: str | None, name: TextName) -> str:
    """The built-in text `name` in `language` (Spanish for an unknown one)."""
    return BUILT_IN[language_of(language)][name]


def is_customized(config: ChannelConfig, name: TextName) -> bool:
    """Whether the channel has its own text `name` (not the built-in one)."""
    value: str | None = getattr(config, name)
    return bool(value and value.strip())


def text_for(config: ChannelConfig, name: TextName) -> str:
    """The text the channel uses: its own, or the built-in one in its language."""
    value: str | None = getattr(config, name)
    if value and value.strip():
        return value
    return built_in(config.language, name)


def customized(config: ChannelConfig) -> list[str]:
    """The names of the texts the channel has edited, in TEXT_NAMES order."""
    return [name for name in TEXT_NAMES if is_customized(config, name)]


def is_built_in(name: TextName, value: str) -> bool:
    """Whether `value` is the built-in text `name` in some language (a form posted back
    unchanged must not turn the built-in text into a customised one)."""
    return any(value.strip() == texts[name] for texts in BUILT_IN.values())
