"""Accounts and their API keys, and the default account a single-business deployment starts with."""

from __future__ import annotations

import hashlib
import secrets
import uuid

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from platica.config import Settings
from platica.logging import get_logger
from platica.models import Account, ApiKey, Channel, ChannelConfig

log = get_logger(__name__)

API_KEY_PREFIX = "plk_"
DEFAULT_ACCOUNT_NAME = "default"
# Used when Twilio is not configured, so the whole loop can be tried locally:
# Twilio's WhatsApp sandbox sender and one of its test numbers.
DEMO_NUMBERS = {Channel.whatsapp: "+14155238886", Channel.sms: "+15005550006"}


def hash_api_key(key: str) -> str:
    # Keys are 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


async def create_api_key(
    session: AsyncSession, account_id: uuid.UUID, name: str = "default"
) -> str:
    """Store a new key for the account (hashed) and return it in clear, the only time it is seen."""
    key = new_api_key()
    session.add(
        ApiKey(account_id=account_id, name=name, prefix=key[:12], key_hash=hash_api_key(key))
    )
    await session.flush()
    return key


async def create_account(
    session: AsyncSession,
    name: str,
    *,
    whatsapp_number: str | None = None,
    sms_number: str | None = None,
) -> tuple[Account, str]:
    """A new account with an API key (returned in clear) and a config for each number given."""
    account = Account(name=name)
    session.add(account)
    await session.flush()
    for channel, number in ((Channel.whatsapp, whatsapp_number), (Channel.sms, sms_number)):
        if number:
            session.add(ChannelConfig(account_id=account.id, channel=channel, phone_number=number))
    await session.flush()
    return account, await create_api_key(session, account.id)


def default_numbers(settings: Settings) -> dict[Channel, str]:
    """The numbers the default account should own: the configured ones, else the demo ones."""
    configured = {
        Channel.whatsapp: settings.TWILIO_WHATSAPP_NUMBER,
        Channel.sms: settings.TWILIO_PHONE_NUMBER,
    }
    if settings.twilio_configured:
        return {channel: number for channel, number in configured.items() if number}
    return {channel: number or DEMO_NUMBERS[channel] for channel, number in configured.items()}


async def ensure_default_account(session: AsyncSession, settings: Settings) -> uuid.UUID | None:
    """Give the configured numbers to the default account, unless some account owns them; the
    default account's id when this created it (the first start on an empty database)."""
    numbers = default_numbers(settings)
    if not numbers:
        return None
    if session.get_bind().dialect.name == "postgresql":
        # Several processes may start at once; let one of them do this.
        await session.execute(text("SELECT pg_advisory_xact_lock(hashtext('platica.bootstrap'))"))
    account: Account | None = None
    created: uuid.UUID | None = None
    for channel, number in numbers.items():
        owner = await session.scalar(
            select(ChannelConfig.id).where(
                ChannelConfig.channel == channel, ChannelConfig.phone_number == number
            )
        )
        if owner is not None:
            continue
        if account is None:
            account = await session.scalar(
                select(Account)
                .where(Account.name == DEFAULT_ACCOUNT_NAME)
                .order_by(Account.created_at)
            )
        if account is None:
            account = Account(name=DEFAULT_ACCOUNT_NAME)
            session.add(account)
            await session.flush()
            created = account.id
            log.info("accounts.default_created", account_id=str(account.id))
        config = await session.scalar(
            select(ChannelConfig).where(
                ChannelConfig.account_id == account.id, ChannelConfig.channel == channel
            )
        )
        if config is None:
            session.add(ChannelConfig(account_id=account.id, channel=channel, phone_number=number))
        else:
            # The variable changed since the account was made: the variable is the truth.
            config.phone_number = number
        await session.flush()
        log.info("accounts.number_assigned", channel=channel.value, number=number)
    return created
