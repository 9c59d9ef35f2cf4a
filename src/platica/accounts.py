"""Accounts and their API keys, and the default account a single-business deployment starts with."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import asdict, dataclass

from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from platica.config import Settings
from platica.errors import (
    AccountNameTaken,
    AccountNotFound,
    AmbiguousAccount,
    BadRequest,
    NumberKeptBySetting,
    NumberTaken,
)
from platica.logging import get_logger
from platica.models import (
    Account,
    ApiKey,
    Broadcast,
    Channel,
    ChannelConfig,
    Contact,
    Conversation,
    Message,
    MessageMedia,
    Template,
    WebhookLog,
)
from platica.texts import DEFAULT_LANGUAGE

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
    language: str = DEFAULT_LANGUAGE,
) -> tuple[Account, str]:
    """A new account with an API key (returned in clear) and a config for each number given,
    its customers' language `language` (its built-in texts and default system prompt)."""
    account = Account(name=name)
    session.add(account)
    await session.flush()
    for channel, number in ((Channel.whatsapp, whatsapp_number), (Channel.sms, sms_number)):
        if number:
            session.add(
                ChannelConfig(
                    account_id=account.id, channel=channel, phone_number=number, language=language
                )
            )
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


# -- managing accounts: find by id or name, numbers, rename, delete --------------------------------

# The setting that gives each channel's number to the default account at every start.
NUMBER_SETTINGS = {Channel.whatsapp: "TWILIO_WHATSAPP_NUMBER", Channel.sms: "TWILIO_PHONE_NUMBER"}
NAME_MAX_LENGTH = 200


async def find_account(session: AsyncSession, ref: str) -> Account:
    """The account `ref` names: its id, or else its exact name, which must be one account's."""
    given = ref.strip()
    try:
        account_id = uuid.UUID(given)
    except ValueError:
        account_id = None
    if account_id is not None:
        account = await session.get(Account, account_id)
        if account is None:
            raise AccountNotFound(f"no account with id {account_id}")
        return account
    named = list(
        await session.scalars(
            select(Account).where(Account.name == given).order_by(Account.created_at).limit(20)
        )
    )
    if not named:
        raise AccountNotFound(f"no account with id or name {given!r}")
    if len(named) > 1:
        ids = ", ".join(str(account.id) for account in named)
        raise AmbiguousAccount(f"{len(named)} accounts are named {given!r}; give the id: {ids}")
    return named[0]


async def account_numbers(session: AsyncSession, account_id: uuid.UUID) -> dict[Channel, str]:
    """The numbers the account owns, by channel."""
    rows = await session.execute(
        select(ChannelConfig.channel, ChannelConfig.phone_number).where(
            ChannelConfig.account_id == account_id
        )
    )
    return {Channel(channel): number for channel, number in rows}


def check_name(name: str) -> str:
    """An account's name, stripped; BadRequest unless it is 1 to 200 characters."""
    stripped = name.strip()
    if not stripped or len(stripped) > NAME_MAX_LENGTH:
        raise BadRequest(f"an account's name must be 1 to {NAME_MAX_LENGTH} characters")
    if "\x00" in stripped:
        raise BadRequest("an account's name must not contain NUL characters")
    return stripped


def _kept_by_settings(settings: Settings, channel: Channel, number: str) -> str | None:
    """Why `number` must stay where it is, when the settings give it to the default account at
    every start (so a move or a delete would silently be undone); None when they do not."""
    if default_numbers(settings).get(channel) != number:
        return None
    variable = NUMBER_SETTINGS[channel]
    if getattr(settings, variable) == number:
        return (
            f"{number} is {variable}, which gives it to the default account at every start; "
            f"change or unset {variable} (and restart) first"
        )
    return (
        f"{number} is the demo {channel.value} number the default account gets at every start "
        f"while Twilio is not configured; set {variable} to the number you want instead"
    )


async def check_number_free(session: AsyncSession, channel: Channel, number: str) -> None:
    """NumberTaken, naming the account, when an account owns `number` on `channel`."""
    owner = await session.scalar(
        select(Account)
        .join(ChannelConfig, ChannelConfig.account_id == Account.id)
        .where(ChannelConfig.channel == channel, ChannelConfig.phone_number == number)
    )
    if owner is not None:
        raise NumberTaken(
            f"{channel.value} number {number} already belongs to account "
            f"{owner.name!r} ({owner.id})"
        )


async def check_name_free(
    session: AsyncSession, name: str, account_id: uuid.UUID | None = None
) -> None:
    """AccountNameTaken when an account (other than `account_id`) has the name."""
    query = select(Account.id).where(Account.name == name)
    if account_id is not None:
        query = query.where(Account.id != account_id)
    other = await session.scalar(query.limit(1))
    if other is not None:
        raise AccountNameTaken(f"account {other} is already named {name!r}")


async def set_number(
    session: AsyncSession,
    account: Account,
    channel: Channel,
    number: str | None,
    settings: Settings,
) -> bool:
    """Give the account `number` on `channel` (a new channel config with the defaults, or the
    existing one's number changed), or remove the channel (its config) when `number` is None.
    `number` is E.164, already checked. True when something changed.

    NumberTaken names the account that owns the number already; NumberKeptBySetting refuses to
    move the number a setting gives to the default account."""
    config = await session.scalar(
        select(ChannelConfig).where(
            ChannelConfig.account_id == account.id, ChannelConfig.channel == channel
        )
    )
    current = config.phone_number if config is not None else None
    if number == current:
        return False
    if current is not None:
        kept = _kept_by_settings(settings, channel, current)
        if kept is not None:
            raise NumberKeptBySetting(f"cannot change the {channel.value} number: {kept}")
    if number is not None:
        await check_number_free(session, channel, number)
    if config is None:
        # A new channel speaks the language the account's other channel does.
        language = await session.scalar(
            select(ChannelConfig.language).where(ChannelConfig.account_id == account.id)
        )
        session.add(
            ChannelConfig(
                account_id=account.id,
                channel=channel,
                phone_number=number,
                language=language or DEFAULT_LANGUAGE,
            )
        )
    elif number is None:
        await session.delete(config)
    else:
        config.phone_number = number
    try:
        await session.flush()
    except IntegrityError:
        # Another transaction took the number between the check and the write.
        raise NumberTaken(
            f"{channel.value} number {number} already belongs to another account"
        ) from None
    log.info(
        "accounts.number_set", account_id=str(account.id), channel=channel.value, number=number
    )
    return True


async def rename_account(session: AsyncSession, account: Account, name: str) -> bool:
    """Give the account a new name (1 to 200 characters, no other account's). True when changed."""
    new_name = check_name(name)
    if new_name == account.name:
        return False
    await check_name_free(session, new_name, account.id)
    account.name = new_name
    await session.flush()
    return True


@dataclass(frozen=True, slots=True)
class AccountData:
    """What deleting an account deletes with it, counted."""

    conversations: int
    messages: int
    contacts: int
    media: int
    api_keys: int
    templates: int
    broadcasts: int
    webhook_logs: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


async def count_account_data(session: AsyncSession, account_id: uuid.UUID) -> AccountData:
    """The account's rows, counted per kind."""
    tables = (Conversation, Message, Contact, MessageMedia, ApiKey, Template, Broadcast, WebhookLog)
    counts = []
    for table in tables:
        query = select(func.count()).select_from(table).where(table.account_id == account_id)
        counts.append(int(await session.scalar(query) or 0))
    return AccountData(*counts)


def check_deletable(settings: Settings, account: Account, numbers: dict[Channel, str]) -> None:
    """NumberKeptBySetting when the account owns a number the settings give to the default
    account (see delete_account)."""
    for channel, number in numbers.items():
        kept = _kept_by_settings(settings, channel, number)
        if kept is not None:
            raise NumberKeptBySetting(f"cannot delete account {account.name!r}: {kept}")


async def delete_account(
    session: AsyncSession, account: Account, settings: Settings
) -> AccountData:
    """Delete the account and all its data; what was deleted, counted.

    Every table's rows go with the account through their foreign keys (ON DELETE CASCADE; on
    SQLite the engine turns foreign keys on), except the webhook log, which keeps the rows of
    webhooks no account took (SET NULL): the account's own are deleted here, since they hold
    its contacts' messages. Refused (NumberKeptBySetting) for an account owning a number the
    settings give to the default account: the next start would give it back to a new, empty
    account of that name, so the delete would not stick."""
    check_deletable(settings, account, await account_numbers(session, account.id))
    counted = await count_account_data(session, account.id)
    await session.execute(delete(WebhookLog).where(WebhookLog.account_id == account.id))
    await session.execute(delete(Account).where(Account.id == account.id))
    log.info("accounts.deleted", account_id=str(account.id), **counted.as_dict())
    return counted
